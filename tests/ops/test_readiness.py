"""Type=notify: a real `kmsgate serve` tells a notification socket bound here what systemd hears.

The test plays systemd's part: it binds the AF_UNIX datagram socket named in NOTIFY_SOCKET
(a path, or an abstract `@name`), reads each datagram with the sender's credentials (as
systemd does for NotifyAccess=main) and checks READY=1, WATCHDOG=1 and STOPPING=1 against
the state of the process at the moment they arrive.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kmsgate.systemd import notify_socket, sd_notify, watchdog_interval
from tests.support.kms import activate_once
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

KMSGATE = Path(sys.executable).parent / "kmsgate"
CREDENTIALS = struct.Struct("iII")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Notification:
    fields: dict[str, str]
    sender: int


class NotifySocket:
    """What systemd listens on: datagrams with the sender's pid attached (SO_PASSCRED)."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)
        self.env_value = "@" + address[1:].decode() if isinstance(address, bytes) else address

    def receive(self, timeout: float) -> Notification | None:
        """The next datagram, or None after timeout seconds."""
        self.sock.settimeout(timeout)
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(CREDENTIALS.size))
        except TimeoutError:
            return None
        sender = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                sender = CREDENTIALS.unpack(payload[: CREDENTIALS.size])[0]
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        return Notification(fields, sender)

    def wait_for(
        self, key: str, proc: subprocess.Popen[bytes], timeout: float
    ) -> list[Notification]:
        """Every notification up to and including the first carrying `key`."""
        seen: list[Notification] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            note = self.receive(0.2)
            if note is not None:
                seen.append(note)
                if key in note.fields:
                    return seen
            elif proc.poll() is not None:
                pytest.fail(f"serve exited with {proc.returncode}; got {seen}")
        pytest.fail(f"no {key} within {timeout} s; got {seen}")

    def close(self) -> None:
        self.sock.close()


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def uids(pid: int) -> set[int]:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    return {int(value) for value in line.split()[1:]}


def environment(notify: NotifySocket, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KMSGATE_", "NOTIFY_", "WATCHDOG_", "LISTEN_"))
    }
    env.update(NOTIFY_SOCKET=notify.env_value, **extra)
    return env


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """Reachable by `nobody` (pytest's own temporary root is private to root), as /var/lib
    and /run/systemd are."""
    base = Path(tempfile.mkdtemp(prefix="kmsgate-notify-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    yield sock
    sock.close()


def serve(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([str(KMSGATE), "serve", *args], env=env, stdout=out, stderr=out)


def finish(proc: subprocess.Popen[bytes], log: Path) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("serve did not stop within 30 s:\n" + log.read_text()[-3000:])


def test_ready_once_listening_and_unprivileged_then_stopping_on_sigterm(
    public_dir: Path, tmp_path: Path
) -> None:
    # Like /run/systemd/notify, the socket accepts any user: READY=1 comes after the drop.
    notify = NotifySocket(str(public_dir / "notify.sock"))
    (public_dir / "notify.sock").chmod(0o777)
    data_dir = public_dir / "data"
    port, web = free_port(), free_port()
    args = ["--listen", f"127.0.0.1:{port}", "--web", f"127.0.0.1:{web}",
            "--data-dir", str(data_dir)]  # fmt: skip
    as_root = os.geteuid() == 0
    if as_root:
        args += ["--user", "nobody"]
    log = tmp_path / "serve.log"
    proc = serve(environment(notify), *args, log=log)
    try:
        seen = notify.wait_for("READY", proc, timeout=60)
        # At the very moment systemd hears READY=1, everything it promises is already true.
        assert accepts(port), "READY=1 before the KMS port accepts"
        with urllib.request.urlopen(f"http://127.0.0.1:{web}/healthz", timeout=5) as health:
            assert health.status == 200
        if as_root:
            assert uids(proc.pid) == {pwd.getpwnam("nobody").pw_uid}, "READY=1 as root"
        assert len(seen) == 1, f"notifications before READY=1: {seen[:-1]}"
        ready = seen[0]
        assert ready.fields["READY"] == "1" and ready.sender == proc.pid
        assert ready.fields["STATUS"] == f"serving KMS on 127.0.0.1:{port}"
        assert asyncio.run(activate_once(port)).ok
        assert notify.receive(1.0) is None  # no watchdog without WATCHDOG_USEC

        proc.send_signal(signal.SIGTERM)
        stopping = notify.wait_for("STOPPING", proc, timeout=30)
        assert [n.fields.get("STOPPING") for n in stopping] == ["1"]
        assert stopping[0].sender == proc.pid
    finally:
        status = finish(proc, log)
    assert status == 0, log.read_text()[-3000:]
    assert notify.receive(0.5) is None  # nothing after the exit
    notify.close()


def test_watchdog_pings_keep_coming_from_the_main_process(
    notify: NotifySocket, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    # 0.6 s watchdog: a ping every 0.3 s.
    env = environment(notify, WATCHDOG_USEC="600000")
    proc = serve(env, "--listen", f"127.0.0.1:{port}", "--no-store", log=log)
    try:
        notify.wait_for("READY", proc, timeout=60)
        pings: list[Notification] = []
        deadline = time.monotonic() + 20
        while len(pings) < 6 and time.monotonic() < deadline:
            note = notify.receive(1.0)
            if note is not None:
                assert note.fields == {"WATCHDOG": "1"}
                pings.append(note)
        assert len(pings) >= 6, f"{len(pings)} watchdog pings in 20 s"
        assert {p.sender for p in pings} == {proc.pid}  # the main process, as NotifyAccess=main
        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING", proc, timeout=30)
        # One SIGTERM, as systemd sends: a second one during the shutdown would kill it.
        status = proc.wait(30)
    finally:
        if proc.poll() is None:
            finish(proc, log)
    assert status == 0, log.read_text()[-3000:]


def test_abstract_socket_and_a_watchdog_meant_for_another_process(tmp_path: Path) -> None:
    notify = NotifySocket(b"\0kmsgate-test-" + uuid.uuid4().hex.encode())
    port = free_port()
    log = tmp_path / "serve.log"
    # WATCHDOG_PID names the shell's parent, not the server: the pings are not ours to send.
    env = environment(notify, WATCHDOG_USEC="100000", WATCHDOG_PID=str(os.getpid()))
    proc = serve(env, "--listen", f"127.0.0.1:{port}", "--no-store", log=log)
    try:
        assert notify.env_value.startswith("@")
        [ready] = notify.wait_for("READY", proc, timeout=60)
        assert ready.sender == proc.pid and accepts(port)
        assert notify.receive(2.0) is None  # 40 pings' worth of time, none sent
    finally:
        status = finish(proc, log)
        notify.close()
    assert status == 0, log.read_text()[-3000:]


def test_no_ready_when_the_start_fails(notify: NotifySocket, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        log = tmp_path / "serve.log"
        proc = serve(environment(notify), "--listen", f"127.0.0.1:{port}", "--no-store", log=log)
        assert proc.wait(60) == 1
    assert notify.receive(0.5) is None
    assert "cannot listen" in log.read_text()


# ---------------------------------------------------------------- the functions themselves


def test_notify_socket_forms() -> None:
    assert notify_socket({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert notify_socket({"NOTIFY_SOCKET": "@sd-notify"}) == b"\0sd-notify"
    assert notify_socket({}) is None
    assert notify_socket({"NOTIFY_SOCKET": ""}) is None
    assert notify_socket({"NOTIFY_SOCKET": "@"}) is None
    assert notify_socket({"NOTIFY_SOCKET": "vsock:2:1234"}) is None
    assert notify_socket({"NOTIFY_SOCKET": "relative/path"}) is None


def test_watchdog_interval_rules() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, pid=7) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, pid=7) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, pid=7) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, pid=7) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, pid=7) is None
    assert watchdog_interval({}, pid=7) is None


def test_a_vanished_socket_is_reported_not_raised(tmp_path: Path) -> None:
    assert sd_notify(str(tmp_path / "gone.sock"), "READY=1") is False
    assert sd_notify(None, "READY=1") is False
    receiver = NotifySocket(str(tmp_path / "here.sock"))
    try:
        assert sd_notify(str(tmp_path / "here.sock"), "READY=1", "STATUS=a b") is True
        note = receiver.receive(5)
        assert note is not None and note.fields == {"READY": "1", "STATUS": "a b"}
        assert note.sender == os.getpid()
    finally:
        receiver.close()


def test_a_manager_that_stops_reading_never_blocks_the_server(tmp_path: Path) -> None:
    # Nobody reads this socket: once its queue is full, a blocking send would hang the event
    # loop (and this test, until pytest's timeout); sd_notify reports the failure instead.
    receiver = NotifySocket(str(tmp_path / "full.sock"))
    delivered = 0
    try:
        while delivered < 5000 and sd_notify(str(tmp_path / "full.sock"), "WATCHDOG=1"):
            delivered += 1
    finally:
        receiver.close()
    assert 0 < delivered < 5000  # the queue filled up and the call came back
