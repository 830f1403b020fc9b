"""G3: behind a dual-stack socket (as kmsgate.socket gives), IPv4 clients are who the portal saw."""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path

import pytest

from kmsgate.server.host import ipv6_available
from tests.adversarial.gateway_util import (
    activate_from,
    add_user,
    audit,
    gateway_node,
    portal_login,
    windows_request,
)

pytestmark = pytest.mark.integration


def dual_stack_listener() -> socket.socket:
    """[::]:port accepting IPv4 too (IPv6-only off), like systemd's BindIPv6Only=default."""
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.bind(("::", 0))
    listener.listen()
    return listener


async def attack(web: str, kms_port: int) -> tuple[int, str | int, str | int, str | int]:
    login = await portal_login(web, "student1", source="127.0.0.1")
    # Over IPv6 (::1) this is another client: it has no window.
    other = await activate_from(kms_port, windows_request(uuid.uuid4()), source="::1", host="::1")
    # The socket sees this one as ::ffff:127.0.0.1.
    served = await activate_from(kms_port, windows_request(uuid.uuid4()))
    second = await activate_from(kms_port, windows_request(uuid.uuid4()))
    return login.status_code, other, served, second


def test_ipv4_client_on_a_dual_stack_socket_uses_its_portal_window(tmp_path: Path) -> None:
    if not ipv6_available():
        pytest.skip("this machine has no IPv6, so there is no dual-stack socket to test")
    add_user(tmp_path, "student1")
    listener = dual_stack_listener()
    try:
        with gateway_node(tmp_path, inherit=listener) as node:
            listener.close()  # only the node holds the socket now
            status, other, served, second = asyncio.run(attack(node.web, node.kms_port))
    finally:
        listener.close()
    assert status == 200
    assert other == "closed"  # ::1 has no window
    assert served == "served"
    assert second == "closed"  # the window served once
    log = node.output
    assert "listening on [::]:" in log
    assert "127.0.0.1:" in log and "admitted by the window of student1" in log
    assert "::ffff:" not in log  # no second identity anywhere in the service log

    trail = audit(tmp_path)
    addresses = {(e["kind"], e["address"]) for e in trail}
    assert ("window_granted", "127.0.0.1") in addresses
    assert ("window_consumed", "127.0.0.1") in addresses
    assert ("connection_refused", "::1") in addresses
    assert not any("::ffff:" in (e["address"] or "") for e in trail)
    [activation] = [e for e in trail if e["kind"] == "activation"]
    assert (activation["address"], activation["result"], activation["username"]) == (
        "127.0.0.1",
        "activated",
        "student1",
    )
