"""Publish this host's ``_vlmcs._tcp`` SRV record by RFC 2136 dynamic update (TSIG-signed).

Several hosts share one SRV RRset: an update only ever deletes the SRV rdata whose target is
this host, then adds the current record, so hosts publishing into the same name coexist. The
records and messages come from `kmsgate.dns.records`; this module reads the settings and
talks to the server.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.update
from dns.rdtypes.IN.SRV import SRV

from kmsgate.config.settings import ServeSettings
from kmsgate.dns.records import (
    SrvRecord,
    absolute_name,
    build_removal,
    build_update,
    own_rdata,
)
from kmsgate.errors import KmsgateError
from kmsgate.net import Endpoint, is_ip_address, parse_endpoint

__all__ = [
    "DEFAULT_TIMEOUT",
    "DnsPublishError",
    "UpdateResult",
    "keyring_from_settings",
    "publish",
    "record_from_settings",
    "server_from_settings",
    "unpublish",
]

log = logging.getLogger("kmsgate.server.dns")

#: Seconds one publish/unpublish may take in all (zone lookup, read, update).
DEFAULT_TIMEOUT = 5.0
_LOCAL_NAMES = {dns.name.from_text("localhost"), dns.name.from_text("localhost.localdomain")}
_RCODE_MEANING = {
    dns.rcode.FORMERR: "the server could not parse the update",
    dns.rcode.SERVFAIL: "the server failed to apply the update",
    dns.rcode.NXDOMAIN: "a prerequisite name does not exist",
    dns.rcode.NOTIMP: "the server does not support dynamic updates",
    dns.rcode.REFUSED: "the server's policy refuses this update (key, ACL or update-policy)",
    dns.rcode.YXDOMAIN: "a prerequisite name exists",
    dns.rcode.YXRRSET: "a prerequisite RRset exists",
    dns.rcode.NXRRSET: "a prerequisite RRset does not exist",
    dns.rcode.NOTAUTH: "the server is not authoritative for the zone or did not accept the key",
    dns.rcode.NOTZONE: "the name is outside the zone",
}

_TSIG_ERRORS: dict[type[dns.tsig.PeerError], tuple[str, str]] = {
    dns.tsig.PeerBadKey: (
        "BADKEY",
        "the server does not know this key name and algorithm, or its ACL or update-policy "
        "does not let the key update this name",
    ),
    dns.tsig.PeerBadSignature: ("BADSIG", "the TSIG secret does not match the server's"),
    dns.tsig.PeerBadTime: ("BADTIME", "this host's clock differs too much from the server's"),
    dns.tsig.PeerBadTruncation: ("BADTRUNC", "the server refused the truncated MAC"),
}


class DnsPublishError(KmsgateError):
    """A DNS update could not be made; ``rcode`` names the server's answer when there was one."""

    def __init__(self, message: str, rcode: str | None = None) -> None:
        super().__init__(message)
        self.rcode = rcode


@dataclass(frozen=True)
class UpdateResult:
    """What one publish or unpublish did."""

    record: SrvRecord
    zone: dns.name.Name
    server: tuple[str, int]
    removed: tuple[str, ...]  # rdata text of this host's SRV records that were deleted


# -- settings ----------------------------------------------------------------------


def record_from_settings(settings: ServeSettings) -> SrvRecord:
    """The SRV record the settings describe (``dns_host`` defaults to this host's FQDN)."""
    if not settings.dns_domain:
        raise ValueError("no DNS domain is set (--dns-domain)")
    return SrvRecord.make(
        settings.dns_domain,
        settings.dns_host or socket.getfqdn(),
        settings.dns_port,
        settings.dns_priority,
        settings.dns_weight,
        settings.dns_ttl,
    )


def keyring_from_settings(settings: ServeSettings) -> dns.tsig.Key | None:
    """The TSIG key of the settings, or None when updates go unsigned."""
    if settings.dns_tsig_name is None or settings.dns_tsig_secret is None:
        return None
    algorithm = absolute_name(settings.dns_tsig_algorithm, "TSIG algorithm")
    if algorithm == dns.name.from_text("hmac-md5"):  # knot's and BIND's spelling
        algorithm = dns.tsig.HMAC_MD5
    if algorithm not in dns.tsig.mac_sizes or algorithm == dns.tsig.GSS_TSIG:
        known = ", ".join(sorted(a.to_text(True).lower() for a in dns.tsig.mac_sizes))
        raise ValueError(f"unknown TSIG algorithm {settings.dns_tsig_algorithm!r} ({known})")
    try:
        return dns.tsig.Key(
            absolute_name(settings.dns_tsig_name, "TSIG key name"),
            settings.dns_tsig_secret.get_secret_value(),
            algorithm,
        )
    except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
        raise ValueError(f"the TSIG secret is not valid base64: {exc}") from None


def server_from_settings(settings: ServeSettings) -> tuple[str, int]:
    """(host, port) of ``dns_server``: ``HOST``, ``HOST:PORT``, ``[V6]:PORT`` or a bare IPv6
    address (port 53 when none is given)."""
    text = (settings.dns_server or "").strip()
    if not text:
        raise ValueError("no DNS server is set (--dns-server)")
    server = parse_endpoint(text, default_port=53, what="DNS server")
    assert server.port is not None  # default_port
    return server.host, server.port


# -- I/O ---------------------------------------------------------------------------


class _Session:
    """One server, key and deadline shared by the queries of a publish or unpublish."""

    def __init__(self, settings: ServeSettings, timeout: float) -> None:
        try:
            self.record = record_from_settings(settings)
            self.keyring = keyring_from_settings(settings)
            self.host, self.port = server_from_settings(settings)
        except ValueError as exc:
            raise DnsPublishError(str(exc)) from None
        self.where = str(Endpoint(self.host, self.port))
        self.address = self.host
        self.deadline = asyncio.get_running_loop().time() + timeout
        self.timeout = timeout

    def _remaining(self) -> float:
        left = self.deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise DnsPublishError(f"DNS server {self.where} timed out after {self.timeout:g} s")
        return left

    async def resolve_server(self) -> None:
        """Turn a server host name into an address (the system resolver does it)."""
        if is_ip_address(self.host):
            return
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM), self._remaining()
            )
        except (OSError, TimeoutError) as exc:
            raise DnsPublishError(f"cannot resolve DNS server {self.host!r}: {exc}") from None
        self.address = str(infos[0][4][0])

    async def exchange(self, message: dns.message.Message) -> dns.message.Message:
        """Send over TCP and verify TSIG; transport and key failures become DnsPublishError."""
        try:
            return await dns.asyncquery.tcp(
                message, self.address, timeout=self._remaining(), port=self.port
            )
        except dns.exception.Timeout:
            raise DnsPublishError(
                f"DNS server {self.where} timed out after {self.timeout:g} s"
            ) from None
        except dns.tsig.PeerError as exc:
            # RFC 8945: the server answered NOTAUTH with a TSIG error instead of signing.
            tsig_error, hint = _TSIG_ERRORS.get(type(exc), ("error", str(exc)))
            raise DnsPublishError(
                f"DNS server {self.where} answered NOTAUTH (TSIG {tsig_error}): {hint}",
                "NOTAUTH",
            ) from None
        except dns.tsig.BadSignature:
            raise DnsPublishError(
                f"the answer of DNS server {self.where} failed TSIG verification"
            ) from None
        except dns.exception.DNSException as exc:
            raise DnsPublishError(f"DNS server {self.where}: {type(exc).__name__}: {exc}") from None
        except EOFError:
            raise DnsPublishError(
                f"DNS server {self.where} closed the connection without answering"
            ) from None
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise DnsPublishError(f"cannot reach DNS server {self.where}: {reason}") from None

    def _query(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype)
        query.flags &= ~dns.flags.RD
        if self.keyring is not None:
            query.use_tsig(self.keyring)
        return query

    async def find_zone(self) -> dns.name.Name:
        """The zone holding the SRV owner, from the server's SOA answer (else the domain)."""
        owner = self.record.owner
        response = await self.exchange(self._query(owner, dns.rdatatype.SOA))
        for rrset in (*response.answer, *response.authority):
            if rrset.rdtype == dns.rdatatype.SOA and owner.is_subdomain(rrset.name):
                return rrset.name
        return owner.parent().parent()

    async def existing(self) -> list[SRV]:
        """The SRV rdata now at the owner name (empty when the server would not say)."""
        owner = self.record.owner
        response = await self.exchange(self._query(owner, dns.rdatatype.SRV))
        if response.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            log.debug(
                "reading %s from %s: %s", owner, self.where, dns.rcode.to_text(response.rcode())
            )
        found: list[SRV] = []
        for rrset in response.answer:
            if rrset.name == owner and rrset.rdtype == dns.rdatatype.SRV:
                found.extend(rd for rd in rrset if isinstance(rd, SRV))
        return found

    async def send_update(self, message: dns.update.UpdateMessage) -> None:
        response = await self.exchange(message)
        rcode = response.rcode()
        if rcode != dns.rcode.NOERROR:
            name = dns.rcode.to_text(rcode)
            meaning = _RCODE_MEANING.get(rcode, "the update was not applied")
            raise DnsPublishError(
                f"DNS server {self.where} answered {name} to the update of zone "
                f"{message.origin}: {meaning}",
                name,
            )


async def publish(settings: ServeSettings, *, timeout: float = DEFAULT_TIMEOUT) -> UpdateResult:
    """Replace this host's SRV rdata in ``_vlmcs._tcp.<dns_domain>`` with the current record."""
    session = _Session(settings, timeout)
    await session.resolve_server()
    zone = await session.find_zone()
    mine = own_rdata(session.record, await session.existing())
    await session.send_update(
        build_update(session.record, zone=zone, existing=mine, keyring=session.keyring)
    )
    removed = tuple(rd.to_text() for rd in mine if rd != session.record.rdata)
    return UpdateResult(session.record, zone, (session.host, session.port), removed)


async def unpublish(settings: ServeSettings, *, timeout: float = DEFAULT_TIMEOUT) -> UpdateResult:
    """Delete this host's SRV rdata (any port, priority or weight); other hosts' stay."""
    session = _Session(settings, timeout)
    await session.resolve_server()
    zone = await session.find_zone()
    mine = own_rdata(session.record, await session.existing())
    await session.send_update(
        build_removal(session.record, zone=zone, existing=mine, keyring=session.keyring)
    )
    return UpdateResult(
        session.record, zone, (session.host, session.port), tuple(rd.to_text() for rd in mine)
    )
