"""A4: a listening socket handed over by socket activation stays out of child processes.

`kmsgate serve` runs under systemd-socket-activate, which binds the port and execs it with the
socket on descriptor 3, as systemd does. The record writer child must not hold that socket.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.server.test_serve_cli import KMSGATE
from tests.support.kms import activate_once
from tests.support.ports import free_port

pytestmark = [pytest.mark.timeout(120), pytest.mark.integration]
ACTIVATOR = shutil.which("systemd-socket-activate")


def socket_inodes(pid: int) -> dict[int, str]:
    """{fd: 'socket:[inode]'} of every socket a process holds."""
    found = {}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = str(fd.readlink())
        except FileNotFoundError:
            continue
        if target.startswith("socket:"):
            found[int(fd.name)] = target
    return found


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()]


def test_the_record_writer_does_not_inherit_the_activated_socket(tmp_path: Path) -> None:
    if ACTIVATOR is None:
        message = "systemd-socket-activate is missing: apt-get install systemd"
        if os.environ.get("KMSGATE_ALLOW_SKIP") == "1":
            pytest.skip(message)
        pytest.fail(message)
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [ACTIVATOR, "--listen", f"127.0.0.1:{port}", str(KMSGATE), "serve", "--no-web",
         "--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:1",
         "--store-writer", "process"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        # systemd-socket-activate execs the service at the first connection, like systemd.
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nothing listens"
                time.sleep(0.05)
        while "listening on" not in (tmp_path / "serve.log").read_text():
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.05)
        assert asyncio.run(activate_once(port)).response.current_client_count > 0
        listening = socket_inodes(proc.pid)[3]  # the serving process holds it as fd 3
        [writer] = children(proc.pid)
        assert "kmsgate.recording.child" in Path(f"/proc/{writer}/cmdline").read_text()
        held = socket_inodes(writer)
        assert listening not in held.values(), f"writer holds the listener: {held}"
        assert 3 not in held
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()
    assert proc.returncode == 0, (tmp_path / "serve.log").read_text()[-2000:]
