"""Source-address policy: CIDR allow and deny lists, deny wins, private networks by default."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from kmsgate.net import canonical_address

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# KMS over MS-RPC is attack surface: only networks that cannot be reached from the
# internet are served unless the administrator says otherwise.
DEFAULT_ALLOW = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "fe80::/10",
    "fc00::/7",
)


MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def parse_network(text: str) -> Network:
    """Parse a CIDR (or a bare address, meaning one host); raise ValueError with the text.

    IPv4-mapped IPv6 networks (::ffff:10.0.0.0/104) become the IPv4 networks they mean:
    peers are judged in canonical form, where an IPv4 client is never ::ffff:a.b.c.d.
    """
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an IP network in CIDR form: {exc}") from None
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(MAPPED):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None  # inside ::ffff:0:0/96
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


@dataclass(frozen=True, slots=True)
class SourcePolicy:
    """Decides whether a peer address may talk to the host at all."""

    allow: tuple[Network, ...]
    deny: tuple[Network, ...] = ()

    @classmethod
    def from_strings(cls, allow: Iterable[str] | None, deny: Iterable[str] = ()) -> SourcePolicy:
        """Build from CIDR strings; `allow=None` means the private-network default."""
        allowed = DEFAULT_ALLOW if allow is None else tuple(allow)
        return cls(tuple(parse_network(a) for a in allowed), tuple(parse_network(d) for d in deny))

    def allows(self, address: str) -> bool:
        """True when `address` is in an allowed network and in no denied one."""
        # An IPv4 client reaching an IPv6 socket shows up as ::ffff:a.b.c.d: judge it as IPv4.
        try:
            ip: Address = ipaddress.ip_address(canonical_address(address).split("%", 1)[0])
        except ValueError:
            return False
        if any(ip in net for net in self.deny):
            return False
        return any(ip in net for net in self.allow)
