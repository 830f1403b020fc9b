"""Typed network peers: one canonical address form wherever addresses are compared or stored."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any


def canonical_address(text: str) -> str:
    """The address as kmsgate compares and stores it: IPv4-mapped IPv6 becomes plain IPv4.

    A dual-stack listener (`[::]:1688`) sees IPv4 clients as `::ffff:a.b.c.d`, while an IPv4
    listener or a web proxy sees `a.b.c.d`; without this the same client has two identities.
    Text that is not an IP address (a Unix socket path, "unknown") is returned unchanged.
    """
    scope = ""
    bare = text.strip()
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    if "%" in bare:
        bare, _, zone = bare.partition("%")
        scope = f"%{zone}"
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        return text
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        return f"{address}{scope}"
    return str(address)


@dataclass(frozen=True, slots=True)
class Peer:
    """The remote end of a connection, its address canonical (see `canonical_address`)."""

    address: str
    port: int | None = None

    @classmethod
    def from_socket_name(cls, name: Any) -> Peer:
        """From a socket's `peername` extra info (a tuple, a path, or None)."""
        if isinstance(name, tuple) and len(name) >= 2:
            return cls(canonical_address(str(name[0])), int(name[1]))
        return cls("unknown")

    @classmethod
    def parse(cls, text: str) -> Peer:
        """From `a.b.c.d:port`, `[v6]:port` or a bare address (the form `str(peer)` gives)."""
        host, sep, port = text.rpartition(":")
        if sep and port.isdigit() and (not host.count(":") or host.startswith("[")):
            return cls(canonical_address(host), int(port))
        return cls(canonical_address(text))

    @property
    def is_ip(self) -> bool:
        """Whether the address is an IP address (not "unknown" or a socket path)."""
        try:
            ipaddress.ip_address(self.address.partition("%")[0])
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        if self.port is None:
            return self.address
        if ":" in self.address:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"
