"""`kmsgate serve` as a real process: starts, activates, logs, stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.kms import activate_once
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

KMSGATE = Path(sys.executable).with_name("kmsgate")


def start_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(KMSGATE), "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def wait_listening(proc: subprocess.Popen[str], port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early: {proc.stdout.read() if proc.stdout else ''}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError("serve did not start listening")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=15)
    return out


def test_serve_activates_logs_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "kmsgate.toml"
    config.write_text('hwid = "0011223344556677"\nclient_count = 99\n')
    proc = start_serve(
        "--config", str(config), "--listen", f"127.0.0.1:{port}", "--web", "127.0.0.1:0",
        env={"KMSGATE_RENEWAL_INTERVAL": "1440", "KMSGATE_DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    try:
        wait_listening(proc, port)
        result = asyncio.run(activate_once(port, 6))
        assert result.ok
        assert result.hwid == bytes.fromhex("0011223344556677")
        assert result.response.current_client_count == 99
        assert result.response.renewal_interval == 1440
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    assert f"listening on 127.0.0.1:{port}\n" in out
    assert '"Windows Server 2019 Datacenter" oob-grace v6.0 activated' in out
    # The whole line, as the text format writes it (the host may write it without a record).
    assert re.search(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z INFO kmsgate\.activation: 127\.0\.0\.1:\d+ "
        r'\S+ "Windows Server 2019 Datacenter" oob-grace v6\.0 activated count=99 '
        r"client-time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$",
        out,
        re.MULTILINE,
    ), out
    assert "web dashboard on http://127.0.0.1:" in out
    assert (tmp_path / "kmsgate.db").is_file()


def test_serve_rejects_invalid_options_with_a_clear_message() -> None:
    proc = subprocess.run(
        [str(KMSGATE), "serve", "--hwid", "nothex", "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "hwid" in proc.stderr and "16 hexadecimal digits" in proc.stderr


def test_serve_reports_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = subprocess.run(
            [str(KMSGATE), "serve", "--listen", f"127.0.0.1:{port}", "--no-web",
             "--data-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert proc.returncode == 1
    assert "cannot listen" in proc.stderr


@pytest.mark.parametrize("flags", [["--no-ndr64", "--no-btfn"], ["--ndr64", "--btfn"]])
def test_serve_transfer_syntax_flags(flags: list[str], tmp_path: Path) -> None:
    port = free_port()
    proc = start_serve(
        "--listen", f"127.0.0.1:{port}", "--log-level", "warning", "--no-web",
        "--data-dir", str(tmp_path), *flags,
    )  # fmt: skip
    try:
        wait_listening(proc, port)
        assert asyncio.run(activate_once(port, 5)).ok
    finally:
        stop(proc)
    assert proc.returncode == 0


def test_serve_reports_a_busy_web_port(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        web_port = holder.getsockname()[1]
        proc = subprocess.run(
            [str(KMSGATE), "serve", "--listen", "127.0.0.1:0", "--web", f"127.0.0.1:{web_port}",
             "--data-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 1
    assert "cannot listen" in proc.stderr and "Traceback" not in proc.stderr
