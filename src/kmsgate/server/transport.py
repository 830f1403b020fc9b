"""What the host's and the relay's connections read from an asyncio transport."""

from __future__ import annotations

import asyncio

from kmsgate.net import Peer, canonical_address

# Canonical form per address text as the socket gives it: parsing an address costs more than
# the rest of accepting a connection. Emptied when a scan of many addresses fills it (at most
# a couple of MiB: the host's memory budget is tight).
_CANONICAL: dict[str, str] = {}
_CANONICAL_LIMIT = 16384


def peer_of(transport: asyncio.BaseTransport) -> Peer:
    """The client's address as the policies, the portal and the audit trail spell it."""
    # Canonical (IPv4-mapped IPv6 as IPv4): a dual-stack listener must not give an IPv4
    # client another identity than the portal, the policies and the audit trail see.
    name = transport.get_extra_info("peername")
    if not (isinstance(name, tuple) and len(name) >= 2):
        return Peer.from_socket_name(name)
    host = name[0]
    # Already a str from every loop: str() of it would still check for signals first.
    text = host if isinstance(host, str) else str(host)
    address = _CANONICAL.get(text)
    if address is None:
        if len(_CANONICAL) >= _CANONICAL_LIMIT:
            _CANONICAL.clear()
        address = _CANONICAL[text] = canonical_address(text)
    return Peer(address, int(name[1]))


# Seconds a closed connection may take to read its last answers when there is no idle timeout.
CLOSE_GRACE = 30.0


def abort_if_unread(
    transport: asyncio.Transport, idle_timeout: float
) -> asyncio.TimerHandle | None:
    """After close(): abort `transport` if what it still holds is not read within the idle
    timeout (a peer that never reads would keep a closed connection, its slot and its
    buffers, for good). The timer, or None when nothing waits."""
    if not transport.get_write_buffer_size():
        return None
    loop = asyncio.get_running_loop()
    return loop.call_later(idle_timeout or CLOSE_GRACE, transport.abort)
