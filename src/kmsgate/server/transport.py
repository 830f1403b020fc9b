"""What the host's and the relay's connections read from an asyncio transport."""

from __future__ import annotations

import asyncio

from kmsgate.net import Peer


def peer_of(transport: asyncio.BaseTransport) -> Peer:
    """The client's address as the policies, the portal and the audit trail spell it."""
    # Canonical (IPv4-mapped IPv6 as IPv4): a dual-stack listener must not give an IPv4
    # client another identity than the portal, the policies and the audit trail see.
    return Peer.from_socket_name(transport.get_extra_info("peername"))
