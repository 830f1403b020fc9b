"""W7: connections reset before they were accepted are logged as resets, not policy denials.

The serving process is stopped (SIGSTOP) while 2 000 connections from an allowed address are
opened and reset (SO_LINGER 0), so each is gone before the process gets to accept it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import time
from pathlib import Path

import pytest

from tests.support.kms import activate_once
from tests.support.web_node import Node, running

pytestmark = [pytest.mark.timeout(300), pytest.mark.integration]
ROUNDS, PER_ROUND = 2, 1000  # each round fits the listener's backlog of 1024
RESET_LINE = "a connection was reset by its client before it was accepted"


def reset_connections(port: int, count: int) -> None:
    """Open count connections (the kernel completes them) and reset each one at once."""
    for _ in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.connect(("127.0.0.1", port))
        sock.close()  # linger 0: RST instead of FIN


def test_resets_before_accept_are_logged_as_resets(tmp_path: Path) -> None:
    node = Node(tmp_path / "node", "--allow", "127.0.0.0/8", web=False)
    with running(node):
        for done in range(1, ROUNDS + 1):
            os.kill(node.pid, signal.SIGSTOP)
            try:
                reset_connections(node.kms_port, PER_ROUND)
            finally:
                os.kill(node.pid, signal.SIGCONT)
            deadline = time.monotonic() + 60
            while node.log().count(RESET_LINE) < PER_ROUND * done:
                assert time.monotonic() < deadline, node.log()[-2000:]
                time.sleep(0.2)
        assert asyncio.run(activate_once(node.kms_port)).response.current_client_count > 0
        log = node.log()
    resets = log.count(RESET_LINE)
    # Not one reset is called a denial: the address was allowed, there was just no address.
    assert "denied by the source policy" not in log
    assert resets == ROUNDS * PER_ROUND
