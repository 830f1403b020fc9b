# Shared by scripts/serve and scripts/test: find Python 3.11+, create .venv, install kmsgate.
# Usage: . scripts/_env.sh, then ensure_venv [group]   (group "test": the test tools too)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${KMSGATE_VENV:-$ROOT/.venv}"

# Debian's invoke-rc.d and deb-systemd-invoke ask this program before a package starts its
# service; exit status 101 means "not now". Overridable for the tests of apt_install only.
POLICY_RC_D="${KMSGATE_POLICY_RC_D:-/usr/sbin/policy-rc.d}"

apt_install() (
    # Installs the named Debian packages that are missing (needs root or sudo), without starting
    # their system services: the tests run their own slapd, dovecot, knot and PostgreSQL on
    # loopback, and the machine's own daemons must not start behind the user's back.
    # A subshell, so the EXIT trap that removes the temporary policy runs on every way out;
    # explicit `|| exit` because callers like `cmd && apt_install` switch `set -e` off.
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    local saved=""
    if [ -e "$POLICY_RC_D" ] || [ -L "$POLICY_RC_D" ]; then
        # The machine has its own policy (container images often do): keep it aside, put it back.
        saved="$POLICY_RC_D.kmsgate-saved.$$"
        $sudo mv "$POLICY_RC_D" "$saved" || exit 1
    fi
    restore_policy() {
        $sudo rm -f "$POLICY_RC_D"
        [ -z "$saved" ] || $sudo mv "$saved" "$POLICY_RC_D"
    }
    trap restore_policy EXIT
    trap 'exit 130' INT TERM HUP
    { printf '#!/bin/sh\n# kmsgate scripts/test: no service starts while it installs packages.\nexit 101\n' |
        $sudo tee "$POLICY_RC_D" >/dev/null && $sudo chmod 0755 "$POLICY_RC_D"; } ||
        { echo "cannot write $POLICY_RC_D: not installing ${missing[*]}" >&2; exit 1; }
    echo "installing Debian packages (their services are not started): ${missing[*]}" >&2
    $sudo apt-get update -qq || exit
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
)

find_python() {
    for cand in python3.11 python3.12 python3.13 python3; do
        if command -v "$cand" >/dev/null 2>&1 &&
            "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$cand"; return 0
        fi
    done
    return 1
}

c_sources_changed() {
    # The C extensions (kmsgate/**/_*.c), built in place by an editable install.
    [ -n "$(find "$ROOT/src/kmsgate" -name '_*.c' -newer "$1" -print -quit)" ]
}

native_sources_changed() {
    # The modules mypyc compiles (an editable install builds them in place): an edit since
    # the last install needs a rebuild, or kmsgate runs them from source (kmsgate/_native.py).
    local listing="$ROOT/src/kmsgate/native_modules.txt" module
    [ "$listing" -nt "$1" ] && return 0
    while read -r module; do
        case "$module" in "" | "#"*) continue ;; esac
        [ "$ROOT/src/$module" -nt "$1" ] && return 0
    done <"$listing"
    return 1
}

ensure_venv() {
    local extra="${1:-}"
    if [ ! -x "$VENV/bin/python" ]; then
        local py
        if ! py="$(find_python)" || ! "$py" -c 'import venv, ensurepip' 2>/dev/null; then
            command -v apt-get >/dev/null && apt_install python3 python3-venv python3-dev gcc
            py="$(find_python)"
        fi
        "$py" -m venv "$VENV"
    fi
    if ! command -v gcc >/dev/null && command -v apt-get >/dev/null; then
        # The C cipher and the mypyc-compiled hot path; without them kmsgate runs slower.
        apt_install gcc python3-dev || echo "no C compiler: kmsgate will run as pure Python" >&2
    fi
    if [ ! -f /usr/include/openssl/evp.h ] && command -v apt-get >/dev/null; then
        # OpenSSL's headers: the cipher then seals v5/v6 responses in one C call.
        apt_install libssl-dev || echo "no OpenSSL headers: responses sealed in Python" >&2
    fi
    if [ ! -f /usr/include/zlib.h ] && command -v apt-get >/dev/null; then
        # zlib's headers: the record ring's append in C (it checksums each entry).
        apt_install zlib1g-dev || echo "no zlib headers: the record ring appends in Python" >&2
    fi
    local stamp="$VENV/.kmsgate-installed${extra:+-$extra}"
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ] || [ "$ROOT/setup.py" -nt "$stamp" ] ||
        c_sources_changed "$stamp" ||
        [ "$ROOT/src/kmsgate/__init__.py" -nt "$stamp" ] ||  # __version__: the metadata
        native_sources_changed "$stamp"; then
        # The test tools are a PEP 735 dependency group: `pip install --group` needs pip 25.1
        # (Debian 12's venv brings 23.0). Some machines' pip configs name local mirror folders
        # that may be absent: hide that noise.
        { "$VENV/bin/python" -m pip install -q --upgrade "pip>=25.1" &&
            "$VENV/bin/python" -m pip install -q -e "$ROOT" \
                ${extra:+--group "$ROOT/pyproject.toml:$extra"}; } 2>&1 |
            { grep -v "is ignored: it is neither a file nor a directory" || true; }
        touch "$stamp"
    fi
}
