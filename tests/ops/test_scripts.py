"""scripts/_env.sh: apt_install keeps packaged services from starting, and cleans up after.

A fake `apt-get` (and `dpkg-query`, `sudo`) on PATH stands in for the real one, so nothing is
installed: the fake records, for every call, whether the policy-rc.d file exists and what it
answers when asked to start a service, exactly as invoke-rc.d would ask it.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ENV_SH = ROOT / "scripts" / "_env.sh"

FAKE_APT_GET = """#!/bin/sh
# Asks the policy what invoke-rc.d would ask it, records the answer, then acts as told.
if [ -e "$KMSGATE_POLICY_RC_D" ]; then
    "$KMSGATE_POLICY_RC_D" slapd start; answer=$?
else
    answer=absent
fi
echo "$* | policy=$answer | frontend=${DEBIAN_FRONTEND:-}" >> "$FAKE_LOG"
case "$1" in
    install)
        [ -z "${FAKE_SIGNAL_PARENT:-}" ] || kill -TERM "$PPID"
        exit "${FAKE_INSTALL_EXIT:-0}" ;;
esac
exit 0
"""
# Every package counts as missing except those named in FAKE_INSTALLED.
FAKE_DPKG_QUERY = """#!/bin/sh
for pkg in $FAKE_INSTALLED; do
    [ "$pkg" = "$3" ] && { printf 'install ok installed'; exit 0; }
done
exit 1
"""
FAKE_SUDO = '#!/bin/sh\nexec "$@"\n'


@pytest.fixture
def fake(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH starts with the fakes and whose policy file is in tmp_path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (
        ("apt-get", FAKE_APT_GET),
        ("dpkg-query", FAKE_DPKG_QUERY),
        ("sudo", FAKE_SUDO),
    ):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "KMSGATE_POLICY_RC_D": str(tmp_path / "policy-rc.d"),
        "FAKE_LOG": str(tmp_path / "apt.log"),
        "FAKE_INSTALLED": "",
    }


def apt_install(env: dict[str, str], *packages: str) -> subprocess.CompletedProcess[str]:
    script = '. "$1"; shift; apt_install "$@"; echo "after: $?"'
    return subprocess.run(
        ["bash", "-c", script, "apt_install", str(ENV_SH), *packages],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def calls(env: dict[str, str]) -> list[str]:
    log = Path(env["FAKE_LOG"])
    return log.read_text().splitlines() if log.exists() else []


def test_services_are_forbidden_to_start_during_the_install(fake: dict[str, str]) -> None:
    fake["FAKE_INSTALLED"] = "gcc"
    result = apt_install(fake, "gcc", "slapd", "knot")
    assert result.returncode == 0, result.stderr
    assert "after: 0" in result.stdout
    assert calls(fake) == [
        "update -qq | policy=101 | frontend=",
        "install -y -qq --no-install-recommends slapd knot | policy=101 | frontend=noninteractive",
    ]
    assert not Path(fake["KMSGATE_POLICY_RC_D"]).exists()
    assert "slapd knot" in result.stderr and "not started" in result.stderr


def test_the_policy_is_removed_when_the_install_fails(fake: dict[str, str]) -> None:
    fake["FAKE_INSTALL_EXIT"] = "100"
    result = apt_install(fake, "dovecot-pop3d")
    assert result.returncode == 100  # set -e: the caller stops with apt-get's status
    assert [line.split(" | ")[1] for line in calls(fake)] == ["policy=101", "policy=101"]
    assert not Path(fake["KMSGATE_POLICY_RC_D"]).exists()


def test_the_policy_is_removed_when_the_install_is_interrupted(fake: dict[str, str]) -> None:
    fake["FAKE_SIGNAL_PARENT"] = "1"  # SIGTERM to apt_install while apt-get runs
    result = apt_install(fake, "chromium")
    assert result.returncode == 130
    assert len(calls(fake)) == 2
    assert not Path(fake["KMSGATE_POLICY_RC_D"]).exists()


def test_a_policy_of_the_machine_is_put_back_unchanged(fake: dict[str, str]) -> None:
    policy = Path(fake["KMSGATE_POLICY_RC_D"])
    original = "#!/bin/sh\n# the machine's own policy\nexit 0\n"
    policy.write_text(original)
    policy.chmod(0o750)
    result = apt_install(fake, "knot")
    assert result.returncode == 0, result.stderr
    # While apt-get ran, ours answered (101), not the machine's (0).
    assert [line.split(" | ")[1] for line in calls(fake)] == ["policy=101", "policy=101"]
    assert policy.read_text() == original
    assert stat.S_IMODE(policy.stat().st_mode) == 0o750
    assert sorted(p.name for p in policy.parent.iterdir() if "policy" in p.name) == [policy.name]


def test_nothing_is_touched_when_every_package_is_installed(fake: dict[str, str]) -> None:
    fake["FAKE_INSTALLED"] = "slapd knot"
    result = apt_install(fake, "slapd", "knot")
    assert result.returncode == 0 and "after: 0" in result.stdout
    assert calls(fake) == []
    assert not Path(fake["KMSGATE_POLICY_RC_D"]).exists()


def test_the_real_policy_path_is_debians() -> None:
    env = {k: v for k, v in os.environ.items() if k != "KMSGATE_POLICY_RC_D"}
    result = subprocess.run(
        ["bash", "-c", '. "$1"; echo "$POLICY_RC_D"', "_", str(ENV_SH)],
        env=env, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert result.stdout.strip() == "/usr/sbin/policy-rc.d"


def test_the_readme_names_what_the_test_command_installs() -> None:
    script = (ROOT / "scripts" / "test").read_text()
    call = script.split("apt_install ", 1)[1].split("\nfi", 1)[0]
    packages = call.replace("\\\n", " ").split()
    assert "slapd" in packages and "chromium" in packages
    readme = (ROOT / "README.md").read_text()
    paragraph = readme.split("`./scripts/test` installs", 1)[1].split("\n\n", 1)[0]
    assert set(re.findall(r"[a-z][a-z0-9-]+", paragraph)) >= set(packages)
    assert "/usr/sbin/policy-rc.d" in paragraph
