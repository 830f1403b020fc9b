"""W6: web clients that pipeline requests and never read the answers cannot hold the listener.

Every one of the listener's connections (here 20) pipelines 2 000 requests for the style
sheet with a 4 KiB receive buffer and then reads nothing. Each holds a response the host
cannot send; without a deadline they held every place for as long as they stayed open. A
client that has not taken its answer within --web-request-timeout is aborted, so /healthz
answers again soon after that timeout while the attackers still hold their sockets.
"""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.support.web_node import Node, running

pytestmark = [pytest.mark.timeout(120), pytest.mark.integration]
PLACES = 20
REQUEST_TIMEOUT = 2.0
PIPELINED = b"GET /static/style.css HTTP/1.1\r\nHost: kms.example\r\n\r\n" * 2000


def stalled_client(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        sock.send(PIPELINED)  # whatever the kernel takes; the rest never matters
    return sock


def healthz(url: str) -> int:
    try:
        return httpx.get(f"{url}/healthz", timeout=3).status_code
    except httpx.HTTPError:
        return 0


def test_clients_that_never_read_their_answers_are_aborted(tmp_path: Path) -> None:
    node = Node(
        tmp_path / "node", "--web-max-connections", str(PLACES),
        "--web-request-timeout", str(REQUEST_TIMEOUT),
    )  # fmt: skip
    with running(node):
        attackers = [stalled_client(node.web_port) for _ in range(PLACES)]
        try:
            time.sleep(0.5)  # every place held by a stalled answer
            held_at, answered_after = time.monotonic(), None
            while time.monotonic() - held_at < 30:
                if healthz(node.url) == 200:
                    answered_after = time.monotonic() - held_at
                    break
                time.sleep(0.25)
        finally:
            for sock in attackers:
                sock.close()
    log = node.log()  # after the stop, which writes the last report
    print(f"/healthz answered {answered_after} s after the listener was held")
    assert answered_after is not None, "the stalled clients held the listener"
    assert "that read no answer within 2 s" in log
    aborted = [line for line in log.splitlines() if "that read no answer within" in line]
    assert any(" aborted 0 " not in line for line in aborted), aborted
