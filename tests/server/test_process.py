"""`kmsgate serve` as a service: socket activation, privilege drop, SIGHUP reload, SIGTERM drain."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from kmsgate.systemd import inherited_sockets
from tests.server.test_serve_cli import KMSGATE, wait_listening
from tests.support.kms import RawClient, activate_once
from tests.support.ports import free_port

pytestmark = pytest.mark.integration


def serve(*args: str, **popen: object) -> subprocess.Popen[str]:
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [str(KMSGATE), "serve", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, **popen,
    )  # fmt: skip


def stop(proc: subprocess.Popen[str], signum: int = signal.SIGTERM) -> str:
    if proc.poll() is None:
        proc.send_signal(signum)
    out, _ = proc.communicate(timeout=20)
    return out


def test_inherited_sockets_ignore_other_processes_environment() -> None:
    assert inherited_sockets({"LISTEN_PID": "1", "LISTEN_FDS": "1"}) == []
    assert inherited_sockets({}) == []


def test_socket_activation_serves_on_the_inherited_socket(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    fd = listener.fileno()

    def as_systemd_would() -> None:
        os.dup2(fd, 3)  # systemd hands listening sockets over from descriptor 3 on

    # LISTEN_PID must be the server's own pid: the shell sets it to $$ and execs in place.
    proc = subprocess.Popen(
        ["sh", "-c", f'LISTEN_PID=$$ LISTEN_FDS=1 exec "{KMSGATE}" serve --no-web '
         f'--data-dir "{tmp_path}" --listen 127.0.0.1:1'],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # close_fds runs after preexec_fn: descriptor 3 must be on the keep list too.
        pass_fds=(fd, 3), preexec_fn=as_systemd_would,
    )  # fmt: skip
    listener.close()  # only the child holds the socket now
    try:
        wait_listening(proc, port)
        result = asyncio.run(activate_once(port))
        assert result.ok
        assert result.response.current_client_count == 10
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    assert f"listening on 127.0.0.1:{port}\n" in out
    assert "listening on 127.0.0.1:1\n" not in out  # --listen is ignored when inherited


@pytest.mark.skipif(os.geteuid() != 0, reason="privilege drop needs root")
@pytest.mark.parametrize("writer", ["inline", "process"])
def test_privileges_are_dropped_after_binding(writer: str) -> None:
    nobody = pwd.getpwnam("nobody")
    port = free_port()
    # As under /var/lib: the service user can reach its data directory (pytest's own
    # temporary root is private to root), for the writer process opens the database later.
    base = Path(tempfile.mkdtemp(prefix="kmsgate-privileges-"))
    base.chmod(0o755)
    data = base / "data"
    proc = serve("--listen", f"127.0.0.1:{port}", "--web", "127.0.0.1:0", "--data-dir",
                 str(data), "--user", "nobody", "--store-writer", writer)  # fmt: skip
    try:
        wait_listening(proc, port)
        deadline = time.monotonic() + 15
        while (uids := process_uids(proc.pid)) != {nobody.pw_uid}:  # drops after the web starts
            assert time.monotonic() < deadline, f"still running as {uids}"
            time.sleep(0.05)
        assert asyncio.run(activate_once(port)).ok
        assert (data / "kmsgate.db").stat().st_uid == nobody.pw_uid
        assert (data / "records.ring").stat().st_uid == nobody.pw_uid
        if writer == "process":  # the record writer process gave up root too, and writes
            [child] = children(proc.pid)
            assert process_uids(child) == {nobody.pw_uid}
        else:
            assert children(proc.pid) == []
        while stored_activations(data / "kmsgate.db") != 1:
            assert time.monotonic() < deadline + 5, "the activation was not recorded"
            time.sleep(0.05)
    finally:
        out = stop(proc)
        shutil.rmtree(base, ignore_errors=True)
    assert proc.returncode == 0, out


def children(pid: int) -> list[int]:
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


def stored_activations(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT count(*) FROM activations").fetchone()[0])


def process_uids(pid: int) -> set[int]:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    return {int(value) for value in line.split()[1:]}


def test_unknown_user_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root changes user")
    proc = serve("--listen", "127.0.0.1:0", "--no-web", "--data-dir", str(tmp_path),
                 "--user", "no-such-user-kmsgate")  # fmt: skip
    out, _ = proc.communicate(timeout=30)
    # A setting naming nobody: refused before anything starts, as a usage error.
    assert proc.returncode == 2 and "no user named" in out


def test_sighup_reloads_policies_without_dropping_connections(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "kmsgate.toml"
    config.write_text("client_count = 30\n")
    proc = serve("--config", str(config), "--listen", f"127.0.0.1:{port}", "--no-web",
                 "--data-dir", str(tmp_path))  # fmt: skip

    async def scenario() -> None:
        held = await RawClient.connect(port)
        await held.bind()
        config.write_text('client_count = 30\ndeny = ["127.0.0.0/8"]\n')
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:  # until the reload is in effect: then new connections are refused
            try:
                await activate_once(port)
            except (ConnectionError, OSError):
                break
            assert time.monotonic() < deadline, "reload never took effect"
            await asyncio.sleep(0.1)
        assert (await held.activate()).ok  # the connection opened before the reload lives on
        await held.close()

    try:
        wait_listening(proc, port)
        assert asyncio.run(activate_once(port)).response.current_client_count == 30
        asyncio.run(scenario())
        config.write_text("client_count = nonsense\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert proc.poll() is None  # a bad file is refused, the host keeps running
    finally:
        out = stop(proc)
    assert "settings reloaded" in out and "reload refused" in out


def test_sigterm_drains_an_activation_in_flight(tmp_path: Path) -> None:
    port = free_port()
    proc = serve("--listen", f"127.0.0.1:{port}", "--no-web", "--data-dir", str(tmp_path))

    async def scenario() -> bool:
        client = await RawClient.connect(port)
        await client.bind()
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)  # the listener is closed by now; this connection is not
        result = await client.activate()
        await client.close()
        return result.ok

    try:
        wait_listening(proc, port)
        assert asyncio.run(scenario())
        proc.wait(timeout=15)
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    assert "stopped after 1 activations" in out
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
