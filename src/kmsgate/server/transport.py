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
    text = str(name[0])
    address = _CANONICAL.get(text)
    if address is None:
        if len(_CANONICAL) >= _CANONICAL_LIMIT:
            _CANONICAL.clear()
        address = _CANONICAL[text] = canonical_address(text)
    return Peer(address, int(name[1]))
