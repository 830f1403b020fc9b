"""Helpers of the gateway attacks: KMS clients from chosen loopback sources, a kmsgate node."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shlex
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from kmsgate.protocol.errors import ActivationError
from kmsgate.protocol.messages import KmsRequest
from tests.server.test_serve_cli import KMSGATE, wait_listening
from tests.support.kms import RawClient, make_request
from tests.support.ports import free_port

PASSWORD = "Campus-Pass-42"
OFFICE_APP = uuid.UUID("0ff1ce15-a989-479d-af46-f275c6370663")
OFFICE_2016_KMS = uuid.UUID("85b5f61b-320b-4be3-814a-b76b2bfafc82")
OFFICE_2016_SKUS = {
    "Office Excel 2016": uuid.UUID("c3e65d36-141f-4d2f-a303-a842ee756a29"),
    "Office Outlook 2016": uuid.UUID("ec9d9265-9d1e-4ed0-838a-cdc20f2551a1"),
    "Office Access 2016": uuid.UUID("67c0fc0c-deba-401b-bf8b-9c8ad8395804"),
}
STOP_TIMEOUT = 30


async def connect(port: int, *, source: str = "127.0.0.1", host: str = "127.0.0.1") -> RawClient:
    """A KMS connection from `source` (any 127.0.0.0/8 address works on Linux loopback)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, local_addr=(source, 0)), 5
    )
    return RawClient(reader, writer)


def windows_request(cmid: uuid.UUID) -> KmsRequest:
    return dataclasses.replace(make_request(), client_machine_id=cmid)


def office_request(cmid: uuid.UUID, product: str) -> KmsRequest:
    return dataclasses.replace(
        make_request(),
        client_machine_id=cmid,
        application_id=OFFICE_APP,
        sku_id=OFFICE_2016_SKUS[product],
        kms_counted_id=OFFICE_2016_KMS,
    )


async def outcome(client: RawClient, request: KmsRequest) -> str | int:
    """The outcome of one request: "served", a refusal's HRESULT, or "closed" (hung up)."""
    try:
        result = await client.activate(request=request)
    except ActivationError as exc:
        return exc.hresult
    except (ConnectionError, OSError, asyncio.IncompleteReadError, TimeoutError):
        return "closed"
    assert result.ok, result
    return "served"


async def activate_from(
    port: int, request: KmsRequest, *, source: str = "127.0.0.1", host: str = "127.0.0.1"
) -> str | int:
    """One connection: bind and one request; its outcome ("closed" if refused at any step)."""
    try:
        client = await connect(port, source=source, host=host)
    except (OSError, TimeoutError):
        return "closed"
    try:
        await client.bind()
    except (ConnectionError, OSError, TimeoutError):
        await client.close()
        return "closed"
    result = await outcome(client, request)
    await client.close()
    return result


def kmsgate(
    data_dir: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KMSGATE), *args, "--data-dir", str(data_dir)], input=stdin, capture_output=True,
        text=True, timeout=60, env={**os.environ, "KMSGATE_LOG_LEVEL": "warning"},
    )  # fmt: skip


def add_user(data_dir: Path, name: str, *extra: str) -> None:
    added = kmsgate(data_dir, "users", "add", name, "--password-stdin", *extra, stdin=PASSWORD)
    assert added.returncode == 0, added.stderr


def audit(data_dir: Path, *filters: str, db: str | None = None) -> list[dict[str, Any]]:
    """The audit trail as `kmsgate audit --json` prints it, oldest first."""
    args = ["audit", "--json", "--limit", "1000", *filters]
    if db is not None:
        args += ["--db", db]
    shown = kmsgate(data_dir, *args)
    assert shown.returncode == 0, shown.stderr
    # `--json` prints the API's page: newest first under "items".
    return list(reversed(json.loads(shown.stdout)["items"]))


@dataclasses.dataclass
class Node:
    """A `kmsgate serve --gateway` process with its KMS and web ports."""

    proc: subprocess.Popen[str]
    kms_port: int
    web_port: int
    data_dir: Path
    log: Path

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def output(self) -> str:
        """The service log so far (a file: a pipe nobody reads would block the node)."""
        return self.log.read_text(errors="replace")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(STOP_TIMEOUT)
        return self.output


@contextlib.contextmanager
def gateway_node(
    data_dir: Path,
    *args: str,
    listen: Sequence[str] | None = None,
    kms_port: int | None = None,
    inherit: socket.socket | None = None,
    wait_kms: bool = True,
) -> Iterator[Node]:
    """Run a gateway node until the block ends (then SIGTERM, which flushes the audit trail).

    With `inherit`, the node gets that listening socket the way systemd's kmsgate.socket
    hands it over (descriptor 3, LISTEN_PID, LISTEN_FDS) instead of binding its own.
    """
    web_port = free_port()
    if inherit is not None:
        kms_port = inherit.getsockname()[1]
    kms_port = kms_port or free_port()
    listen_args: list[str] = []
    for address in listen or [f"127.0.0.1:{kms_port}"]:
        listen_args += ["--listen", address]
    argv = [str(KMSGATE), "serve", "--gateway", *listen_args, "--web", f"127.0.0.1:{web_port}",
            "--data-dir", str(data_dir), "--log-level", "info", *args]  # fmt: skip
    popen: dict[str, Any] = {}
    if inherit is not None:
        fd = inherit.fileno()
        # LISTEN_PID must be the server's own pid: the shell sets it to $$ and execs in place.
        argv = ["sh", "-c", f"LISTEN_PID=$$ LISTEN_FDS=1 exec {shlex.join(argv)}"]
        # close_fds runs after preexec_fn: descriptor 3 must be on the keep list too.
        popen = {"pass_fds": (fd, 3), "preexec_fn": lambda: os.dup2(fd, 3)}
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / f"node-{web_port}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True, **popen)
    node = Node(proc, kms_port, web_port, data_dir, log)
    try:
        wait_listening(proc, web_port)
        if wait_kms:
            wait_listening(proc, kms_port)
        yield node
    finally:
        node.stop()


async def portal_login(
    node_web: str,
    user: str,
    *,
    source: str = "127.0.0.1",
    password: str = PASSWORD,
    timeout: float = 30,
) -> httpx.Response:
    """POST /api/login from the loopback address `source`."""
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(base_url=node_web, transport=transport, timeout=timeout) as web:
        return await web.post("/api/login", json={"username": user, "password": password})


def wait_for(predicate: Any, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
