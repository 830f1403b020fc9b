"""The ``_vlmcs._tcp`` SRV record of one host, its A/AAAA lines and RFC 2136 update messages.

Pure: names, records and messages are built here; sending them is `kmsgate.dns.update`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.update
from dns.rdtypes.IN.SRV import SRV

from kmsgate.net import is_ip_address

__all__ = [
    "SRV_SERVICE",
    "SrvRecord",
    "absolute_name",
    "build_removal",
    "build_update",
    "own_rdata",
    "srv_records",
]

#: Service/protocol labels prepended to a domain to form the SRV owner name.
SRV_SERVICE = "_vlmcs._tcp"
_LOCAL_NAMES = {dns.name.from_text("localhost"), dns.name.from_text("localhost.localdomain")}


@dataclass(frozen=True)
class SrvRecord:
    """The SRV record one host publishes (owner and target are absolute names)."""

    owner: dns.name.Name
    target: dns.name.Name
    port: int
    priority: int = 0
    weight: int = 0
    ttl: int = 3600

    @classmethod
    def make(
        cls,
        domain: str,
        host: str,
        port: int = 1688,
        priority: int = 0,
        weight: int = 0,
        ttl: int = 3600,
    ) -> SrvRecord:
        """Validate and build; a single-label ``host`` is taken relative to ``domain``."""
        zone = absolute_name(domain, "domain")
        if zone == dns.name.root:
            raise ValueError("the root domain cannot hold KMS SRV records")
        target = _target_name(host, zone)
        for label, value, top in (
            ("port", port, 65535),
            ("priority", priority, 65535),
            ("weight", weight, 65535),
            ("TTL", ttl, 2**31 - 1),
        ):
            if not 0 <= value <= top:
                raise ValueError(f"SRV {label} {value} is out of range 0-{top}")
        if port == 0:
            raise ValueError("SRV port 0 announces no service")
        try:
            owner = dns.name.from_text(SRV_SERVICE, origin=None).concatenate(zone)
        except dns.name.NameTooLong:
            raise ValueError(f"domain {domain!r} is too long") from None
        return cls(owner, target, port, priority, weight, ttl)

    @property
    def rdata(self) -> SRV:
        """The record's SRV rdata."""
        text = f"{self.priority} {self.weight} {self.port} {self.target}"
        rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.SRV, text)
        assert isinstance(rdata, SRV)
        return rdata

    def to_text(self) -> str:
        """The record as one zone-file line."""
        return f"{self.owner} {self.ttl} IN SRV {self.rdata.to_text()}"


def absolute_name(text: str, what: str) -> dns.name.Name:
    """`text` as an absolute DNS name; ValueError naming `what` when it is none."""
    text = text.strip()
    if not text:
        raise ValueError(f"empty {what}")
    try:
        return dns.name.from_text(text)
    except dns.exception.DNSException as exc:
        raise ValueError(f"invalid {what} {text!r}: {exc}") from None


def _target_name(host: str, zone: dns.name.Name) -> dns.name.Name:
    host = host.strip()
    if is_ip_address(host):
        raise ValueError(f"SRV target must be a host name, not the address {host!r} (RFC 2782)")
    name = absolute_name(host, "host name")
    if name == dns.name.root or name in _LOCAL_NAMES:
        raise ValueError(
            f"{host!r} cannot be published as the SRV target; give this host's DNS name"
        )
    if len(name) == 2 and not host.endswith("."):  # a short host name: qualify it
        try:
            name = dns.name.Name(name.labels[:1]).concatenate(zone)
        except dns.name.NameTooLong:
            raise ValueError(f"host name {host!r} is too long in {zone}") from None
    return name


def srv_records(
    domain: str,
    host: str,
    port: int = 1688,
    priority: int = 0,
    weight: int = 0,
    ttl: int = 3600,
    addresses: Sequence[str] = (),
) -> list[str]:
    """Zone-file lines: the SRV record, then A and AAAA records of ``host`` for ``addresses``."""
    record = SrvRecord.make(domain, host, port, priority, weight, ttl)
    parsed: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not an IPv4 or IPv6 address") from None
        if address not in parsed:
            parsed.append(address)
    parsed.sort(key=lambda a: a.version)  # A before AAAA, given order otherwise
    lines = [record.to_text()]
    for address in parsed:
        rrtype = "A" if address.version == 4 else "AAAA"
        lines.append(f"{record.target} {ttl} IN {rrtype} {address}")
    return lines


def own_rdata(record: SrvRecord, existing: Iterable[SRV]) -> list[SRV]:
    """Existing rdata targeting this host (any port, priority or weight), without duplicates."""
    mine: list[SRV] = []
    for rdata in existing:
        if rdata.target == record.target and rdata not in mine:
            mine.append(rdata)
    return mine


def build_update(
    record: SrvRecord,
    *,
    zone: dns.name.Name | str | None = None,
    existing: Iterable[SRV] = (),
    keyring: dns.tsig.Key | None = None,
) -> dns.update.UpdateMessage:
    """One update deleting ``existing`` SRV rdata of this target, then adding ``record``."""
    message = dns.update.UpdateMessage(_zone_of(record, zone))
    for rdata in own_rdata(record, existing):
        message.delete(record.owner, rdata)
    message.add(record.owner, record.ttl, record.rdata)
    if keyring is not None:
        message.use_tsig(keyring)
    return message


def build_removal(
    record: SrvRecord,
    *,
    zone: dns.name.Name | str | None = None,
    existing: Iterable[SRV] = (),
    keyring: dns.tsig.Key | None = None,
) -> dns.update.UpdateMessage:
    """One update deleting only this target's SRV rdata: ``existing`` ones and ``record`` itself."""
    message = dns.update.UpdateMessage(_zone_of(record, zone))
    for rdata in own_rdata(record, [record.rdata, *existing]):
        message.delete(record.owner, rdata)
    if keyring is not None:
        message.use_tsig(keyring)
    return message


def _zone_of(record: SrvRecord, zone: dns.name.Name | str | None) -> dns.name.Name:
    if zone is None:
        return record.owner.parent().parent()
    return zone if isinstance(zone, dns.name.Name) else absolute_name(zone, "zone")
