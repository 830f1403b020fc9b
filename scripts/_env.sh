# Shared by scripts/serve and scripts/test: find Python 3.11+, create .venv, install kmsgate.
# Usage: . scripts/_env.sh [extra]   (extra: "test" installs the test dependencies too)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${KMSGATE_VENV:-$ROOT/.venv}"

apt_install() {
    # Installs the named Debian packages that are missing (needs root or sudo).
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing Debian packages: ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

find_python() {
    for cand in python3.11 python3.12 python3.13 python3; do
        if command -v "$cand" >/dev/null 2>&1 &&
            "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$cand"; return 0
        fi
    done
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
    local stamp="$VENV/.kmsgate-installed${extra:+-$extra}"
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ] || [ "$ROOT/setup.py" -nt "$stamp" ] ||
        [ "$ROOT/src/kmsgate/protocol/_cipher.c" -nt "$stamp" ]; then
        # Some machines' pip configs name local mirror folders that may be absent: hide that noise.
        { "$VENV/bin/python" -m pip install -q --upgrade pip &&
            "$VENV/bin/python" -m pip install -q -e "$ROOT${extra:+[$extra]}"; } 2>&1 |
            { grep -v "is ignored: it is neither a file nor a directory" || true; }
        touch "$stamp"
    fi
}
