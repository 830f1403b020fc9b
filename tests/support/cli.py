"""Helpers of the admin-trap tests: the real `kmsgate` console script in a subprocess."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KMSGATE = Path(sys.executable).with_name("kmsgate")
# `2026-11-23 07:13:30.102Z INFO kmsgate.server: message`
LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z (?P<level>[A-Z]+) (?P<logger>\S+): (?P<msg>.*)$"
)


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment without KMSGATE_* settings of the machine, and no /etc config."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("KMSGATE_")}
    # A data directory of the test's own, so nothing lands in the real home directory.
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    env.update(extra)
    return env


def kmsgate(
    *args: str,
    tmp_path: Path,
    stdin: str | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run `kmsgate ARGS` to completion; stdout and stderr kept apart."""
    return subprocess.run(
        [str(KMSGATE), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd or tmp_path,
        env=env or clean_env(tmp_path),
        timeout=timeout,
    )


def start_serve(
    *args: str, tmp_path: Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """`kmsgate serve ARGS` in the background, stderr captured apart from stdout.

    Into files, not pipes: a debug-level start writes more than a pipe holds, and a server
    blocked on a full pipe never starts listening.
    """
    out = tempfile.NamedTemporaryFile("w+", dir=tmp_path, suffix=".out", delete=False)  # noqa: SIM115
    err = tempfile.NamedTemporaryFile("w+", dir=tmp_path, suffix=".err", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [str(KMSGATE), "serve", *args],
        stdout=out,
        stderr=err,
        text=True,
        cwd=cwd or tmp_path,
        env=env or clean_env(tmp_path),
    )
    _CAPTURED[proc.pid] = (Path(out.name), Path(err.name))
    out.close()
    err.close()
    return proc


_CAPTURED: dict[int, tuple[Path, Path]] = {}


def _output(proc: subprocess.Popen[str]) -> tuple[str, str]:
    out, err = _CAPTURED[proc.pid]
    return out.read_text(), err.read_text()


def wait_listening(
    proc: subprocess.Popen[str], port: int, host: str = "127.0.0.1", timeout: float = 30
) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early ({proc.returncode}): {_output(proc)[1]}")
        with socket.socket(family) as sock:
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"serve did not listen on {host}:{port}")


def stop_serve(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    """SIGTERM, then (returncode, stdout, stderr)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    out, err = _output(proc)
    return proc.returncode, out, err


def log_records(text: str) -> list[tuple[str, str, str]]:
    """(level, logger, message) of each log line; AssertionError on a line of another shape."""
    records = []
    for line in text.splitlines():
        match = LOG_LINE.match(line)
        assert match, f"not a kmsgate log line: {line!r}"
        records.append((match["level"], match["logger"], match["msg"]))
    return records
