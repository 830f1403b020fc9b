"""Publish this host's ``_vlmcs._tcp`` SRV record by RFC 2136 dynamic update (TSIG-signed).

Several hosts share one SRV RRset: an update only ever deletes the SRV rdata whose target is
this host, then adds the current record, so hosts publishing into the same name coexist.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.update
from dns.rdtypes.IN.SRV import SRV

from kmsgate.client.discovery import SRV_SERVICE
from kmsgate.config import ServeSettings, parse_listen
from kmsgate.errors import KmsgateError

__all__ = [
    "DEFAULT_TIMEOUT",
    "DnsPublishError",
    "DnsPublisher",
    "SrvRecord",
    "UpdateResult",
    "build_removal",
    "build_update",
    "publish",
    "record_from_settings",
    "srv_records",
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
        zone = _absolute(domain, "domain")
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


@dataclass(frozen=True)
class UpdateResult:
    """What one publish or unpublish did."""

    record: SrvRecord
    zone: dns.name.Name
    server: tuple[str, int]
    removed: tuple[str, ...]  # rdata text of this host's SRV records that were deleted


def _absolute(text: str, what: str) -> dns.name.Name:
    text = text.strip()
    if not text:
        raise ValueError(f"empty {what}")
    try:
        return dns.name.from_text(text)
    except dns.exception.DNSException as exc:
        raise ValueError(f"invalid {what} {text!r}: {exc}") from None


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _target_name(host: str, zone: dns.name.Name) -> dns.name.Name:
    host = host.strip()
    if _is_address(host):
        raise ValueError(f"SRV target must be a host name, not the address {host!r} (RFC 2782)")
    name = _absolute(host, "host name")
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


def _this_host(record: SrvRecord, existing: Iterable[SRV]) -> list[SRV]:
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
    for rdata in _this_host(record, existing):
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
    for rdata in _this_host(record, [record.rdata, *existing]):
        message.delete(record.owner, rdata)
    if keyring is not None:
        message.use_tsig(keyring)
    return message


def _zone_of(record: SrvRecord, zone: dns.name.Name | str | None) -> dns.name.Name:
    if zone is None:
        return record.owner.parent().parent()
    return zone if isinstance(zone, dns.name.Name) else _absolute(zone, "zone")


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
    algorithm = _absolute(settings.dns_tsig_algorithm, "TSIG algorithm")
    if algorithm == dns.name.from_text("hmac-md5"):  # knot's and BIND's spelling
        algorithm = dns.tsig.HMAC_MD5
    if algorithm not in dns.tsig.mac_sizes or algorithm == dns.tsig.GSS_TSIG:
        known = ", ".join(sorted(a.to_text(True).lower() for a in dns.tsig.mac_sizes))
        raise ValueError(f"unknown TSIG algorithm {settings.dns_tsig_algorithm!r} ({known})")
    try:
        return dns.tsig.Key(
            _absolute(settings.dns_tsig_name, "TSIG key name"),
            settings.dns_tsig_secret.get_secret_value(),
            algorithm,
        )
    except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
        raise ValueError(f"the TSIG secret is not valid base64: {exc}") from None


def server_from_settings(settings: ServeSettings) -> tuple[str, int]:
    """(host, port) of ``dns_server``: ``ADDR:PORT``, ``[V6]:PORT`` or a bare ADDR (port 53)."""
    text = (settings.dns_server or "").strip()
    if not text:
        raise ValueError("no DNS server is set (--dns-server)")
    if text.isdigit():
        raise ValueError(f"DNS server {text!r} must look like ADDR:PORT")
    if _is_address(text) or ":" not in text:
        return text, 53
    host, port = parse_listen(text)
    if port == 0:
        raise ValueError(f"DNS server {text!r} needs a port 1-65535")
    return host, port


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
        self.where = (
            f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"
        )
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
        if _is_address(self.host):
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
    mine = _this_host(session.record, await session.existing())
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
    mine = _this_host(session.record, await session.existing())
    await session.send_update(
        build_removal(session.record, zone=zone, existing=mine, keyring=session.keyring)
    )
    return UpdateResult(
        session.record, zone, (session.host, session.port), tuple(rd.to_text() for rd in mine)
    )


_unpublish = unpublish  # DnsPublisher.stop's parameter shadows the function's name


class DnsPublisher:
    """Keeps this host's SRV record published: now, then every ``interval`` seconds."""

    def __init__(
        self,
        settings: ServeSettings,
        *,
        interval: float | None = None,
        retry_delay: float = 10.0,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.settings = settings
        self.interval = float(settings.dns_interval if interval is None else interval)
        self.retry_delay = min(retry_delay, self.interval)
        self.timeout = timeout
        self.published = 0  # successful updates so far
        self.failures = 0  # failed attempts so far
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def running(self) -> bool:
        """Whether the refresh task is alive."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start publishing in the background; the first update is sent at once."""
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name="kmsgate-dns-publish")

    async def _run(self) -> None:
        delay = self.retry_delay
        while not self._stopping.is_set():
            error = await self._publish_once()
            if error is None:
                delay, pause = self.retry_delay, self.interval
            else:
                self.failures += 1
                self.last_error = error
                log.warning("cannot publish the DNS SRV record: %s; retrying in %g s", error, delay)
                delay, pause = min(delay * 2, self.interval), delay
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause)

    async def _publish_once(self) -> str | None:
        """One publish; returns why it failed, or None."""
        try:
            result = await publish(self.settings, timeout=self.timeout)
        except DnsPublishError as exc:
            return str(exc)
        except Exception as exc:  # publishing must never bring the host down
            log.exception("unexpected error publishing the DNS SRV record")
            return f"{type(exc).__name__}: {exc}"
        self.published += 1
        self.last_error = None
        level = logging.INFO if self.published == 1 or result.removed else logging.DEBUG
        log.log(
            level,
            "published %s via %s:%d (zone %s)%s",
            result.record.to_text(),
            *result.server,
            result.zone,
            f", replacing {', '.join(result.removed)}" if result.removed else "",
        )
        return None

    async def stop(self, unpublish: bool = True) -> None:
        """Stop refreshing; with ``unpublish`` delete this host's record (failures only logged)."""
        task, self._task = self._task, None
        if task is None:
            return
        # Let an update in flight finish (bounded by the timeout): cancelling it could leave
        # it applied by the server after our removal.
        self._stopping.set()
        try:
            await asyncio.wait_for(task, self.timeout + 1)
        except TimeoutError:
            log.warning("the DNS update in flight did not finish; cancelled it")
        except Exception:  # _run catches everything itself; this is belt and braces
            log.exception("the DNS publisher failed")
        if not unpublish:
            return
        try:
            result = await _unpublish(self.settings, timeout=self.timeout)
        except DnsPublishError as exc:
            log.warning("cannot remove the DNS SRV record: %s", exc)
        except Exception:  # shutdown must go on
            log.exception("unexpected error removing the DNS SRV record")
        else:
            log.info("removed %s from DNS via %s:%d", result.record.owner, *result.server)
