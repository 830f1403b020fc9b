"""G7: a refused connection from the admitted one's own address and port ends nothing.

Two TCP connections may share a source address and port when they reach two of the host's
addresses. The host refuses the second (the window is taken); its close must neither release
the first one's window nor unlink the first one's activation from the login, locally or
through a relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.adversarial.gateway_util import (
    activate_from,
    add_user,
    audit,
    gateway_node,
    outcome,
    portal_login,
    wait_for,
    windows_request,
)
from tests.support.kms import RawClient
from tests.support.ports import free_port
from tests.support.store_node import node

pytestmark = pytest.mark.integration

ROUNDS = 3


async def connect_from(source_port: int, host: str, port: int) -> RawClient:
    """A connection from 127.0.0.1:source_port, a port other connections may share."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", source_port))
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), 5)
    except BaseException:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock)
    return RawClient(reader, writer)


async def shared_source_rounds(web: str, kms_port: int) -> dict[str, object]:
    login = await portal_login(web, "student1")
    assert login.status_code == 200, login.text
    rounds: list[object] = []
    for _ in range(ROUNDS):
        source = free_port()
        first = await connect_from(source, "127.0.0.1", kms_port)
        try:
            await first.bind()
        except (ConnectionError, TimeoutError):
            await first.close()
            rounds.append("closed")
            continue
        second = await connect_from(source, "127.0.0.2", kms_port)
        # Refused: the host closes it (its close is what used to end the first's admission).
        second_closed = await asyncio.wait_for(second.reader.read(1), 10) == b""
        await second.close()
        await asyncio.sleep(0.3)
        rounds.append((await outcome(first, windows_request(uuid.uuid4())), second_closed))
        await first.close()
    plain = await activate_from(kms_port, windows_request(uuid.uuid4()))
    elsewhere = await portal_login(web, "student1", source="127.0.0.3")
    return {"window": login.json()["window"]["id"], "rounds": rounds, "plain": plain,
            "elsewhere": elsewhere.status_code}  # fmt: skip


@contextlib.contextmanager
def upstream_for(mode: str) -> Iterator[list[str]]:
    """The gateway's extra arguments: none (it serves), or a relay to a real kmsgate host."""
    if mode == "local":
        yield []
        return
    with node() as upstream:
        yield ["--upstream", f"127.0.0.1:{upstream.port}"]


@pytest.mark.parametrize("mode", ["local", "relay"])
def test_a_refused_twin_connection_neither_reopens_nor_unlinks_the_window(
    tmp_path: Path, mode: str
) -> None:
    add_user(tmp_path, "student1")
    port = free_port()
    listen = [f"127.0.0.1:{port}", f"127.0.0.2:{port}"]
    with (
        upstream_for(mode) as extra,
        gateway_node(
            tmp_path, *extra, "--quota-week", "1", "--window", "60", listen=listen, kms_port=port
        ) as gateway,
    ):
        seen = asyncio.run(shared_source_rounds(gateway.web, port))
        # Spends and releases are written after the close: wait for the spend.
        wait_for(lambda: any(e["kind"] == "activation" for e in audit(tmp_path)), what="activation")
    # One machine for one login: the later rounds' first connections find no window.
    assert seen["rounds"] == [("served", True), "closed", "closed"], seen
    assert seen["plain"] == "closed"
    assert seen["elsewhere"] == 403  # the weekly quota of 1 is spent
    trail = audit(tmp_path)
    kinds = [e["kind"] for e in trail]
    assert kinds.count("window_consumed") == 1
    assert "window_released" not in kinds, trail
    [served] = [e for e in trail if e["kind"] == "activation"]
    assert served["result"] == "activated"
    assert (served["username"], served["window_id"]) == ("student1", seen["window"])
