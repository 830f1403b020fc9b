"""KMS host discovery through DNS SRV records (``_vlmcs._tcp.<domain>``, RFC 2782).

A KMS client that is not told which host to use looks up ``_vlmcs._tcp`` SRV
records in its DNS search domain(s) and tries the targets in the order RFC 2782
prescribes: lowest priority first, and within one priority a weighted random
choice (weight 0 entries get a small but non-zero chance of being first). The
order is dnspython's SRV processing order, drawn from the `random` module.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.resolver
from dns.rdtypes.IN.SRV import SRV

from kmsgate.dns.records import SRV_SERVICE
from kmsgate.errors import KmsgateError
from kmsgate.net import Endpoint, is_ip_address, parse_endpoint

__all__ = [
    "SRV_SERVICE",
    "Discovered",
    "DiscoveryError",
    "KmsHostCandidate",
    "discover_endpoints",
    "discover_kms_hosts",
    "find_kms_hosts",
    "make_resolver",
    "order_srv_records",
    "parse_nameserver",
    "resolve_addresses",
    "srv_name",
]


@dataclass(frozen=True)
class KmsHostCandidate:
    """One KMS host advertised by an SRV record."""

    host: str  # target name without trailing dot
    port: int
    priority: int
    weight: int

    @property
    def rdata(self) -> SRV:
        """The SRV rdata advertising this candidate."""
        target = dns.name.from_text(self.host)
        text = f"{self.priority} {self.weight} {self.port} {target}"
        rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.SRV, text)
        assert isinstance(rdata, SRV)
        return rdata


class DiscoveryError(KmsgateError):
    """No usable KMS host could be found in DNS.

    ``attempts`` lists ``(srv name, reason)`` for every name that was tried.
    """

    def __init__(self, message: str, attempts: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.attempts: tuple[tuple[str, str], ...] = tuple(attempts)


def _domain_name(domain: str | dns.name.Name) -> dns.name.Name:
    if isinstance(domain, dns.name.Name):
        name = domain if domain.is_absolute() else domain.concatenate(dns.name.root)
    else:
        text = domain.strip()
        if not text or text == ".":
            raise ValueError("empty domain name")
        try:
            name = dns.name.from_text(text)
        except dns.exception.DNSException as exc:
            raise ValueError(f"invalid domain name {domain!r}: {exc}") from exc
    if name == dns.name.root:
        raise ValueError("the root domain cannot hold KMS SRV records")
    return name


def _srv_dns_name(domain: str | dns.name.Name) -> dns.name.Name:
    service = dns.name.from_text(SRV_SERVICE, origin=None)
    try:
        return service.concatenate(_domain_name(domain))
    except dns.name.NameTooLong as exc:
        raise ValueError(f"domain name {domain!s} is too long") from exc


def srv_name(domain: str) -> str:
    """Return the absolute SRV owner name for ``domain``: ``_vlmcs._tcp.example.com.``."""
    return _srv_dns_name(domain).to_text()


def order_srv_records(
    records: Sequence[KmsHostCandidate], *, honour_priority: bool = True
) -> list[KmsHostCandidate]:
    """Return the distinct ``records`` in the order a client should try them.

    With ``honour_priority`` (the default) this is RFC 2782's order as dnspython processes
    an SRV RRset: ascending priority, weighted random order within each priority. Without
    it the records are simply shuffled (vlmcs ``-P``). Duplicates collapse, as in an RRset.
    """
    distinct = list(dict.fromkeys(records))
    if not honour_priority or not distinct:
        random.shuffle(distinct)
        return distinct
    by_rdata = {candidate.rdata: candidate for candidate in distinct}
    rdataset = dns.rdataset.from_rdata_list(0, list(by_rdata))
    return [by_rdata[rdata] for rdata in rdataset.processing_order() if isinstance(rdata, SRV)]


def _search_domains(resolver: dns.resolver.BaseResolver) -> list[dns.name.Name]:
    """Search domains in the order dnspython (and libc) would use them."""
    if resolver.search:
        candidates = list(resolver.search)
    elif resolver.domain is not None and resolver.domain != dns.name.root:
        candidates = [resolver.domain]
    else:
        candidates = []
    domains: list[dns.name.Name] = []
    for name in candidates:
        absolute = name if name.is_absolute() else name.concatenate(dns.name.root)
        if absolute != dns.name.root and absolute not in domains:
            domains.append(absolute)
    return domains


def _nameserver_failure_reason(exc: dns.resolver.NoNameservers) -> str:
    details: list[str] = []
    for error in exc.kwargs.get("errors", []):
        server, tcp, _port, err, _response = error  # server text already holds the port
        details.append(f"{server}{' (TCP)' if tcp else ''}: {err}")
    if not details:
        return "no nameserver answered"
    return "no nameserver answered usefully (" + "; ".join(details) + ")"


async def _lookup(
    resolver: dns.asyncresolver.Resolver, qname: dns.name.Name
) -> tuple[list[KmsHostCandidate], str]:
    """Query one SRV name: return (usable candidates, reason if there are none)."""
    try:
        answer = await resolver.resolve(qname, dns.rdatatype.SRV, search=False)
    except dns.resolver.NXDOMAIN:
        return [], "NXDOMAIN (name does not exist)"
    except dns.resolver.NoAnswer:
        return [], "no answer (name exists but has no SRV records)"
    except dns.exception.Timeout as exc:
        return [], f"timeout ({exc})"
    except dns.resolver.NoNameservers as exc:
        return [], _nameserver_failure_reason(exc)
    except dns.resolver.YXDOMAIN:
        return [], "YXDOMAIN (name too long after DNAME substitution)"
    except dns.exception.DNSException as exc:
        return [], f"DNS error ({type(exc).__name__}: {exc})"

    candidates: list[KmsHostCandidate] = []
    declined = False
    for rdata in answer:
        if not isinstance(rdata, SRV):
            continue
        if rdata.target == dns.name.root:
            # RFC 2782: target "." means the service is decidedly not available here.
            declined = True
            continue
        host = rdata.target.to_text(omit_final_dot=True)
        candidates.append(KmsHostCandidate(host, rdata.port, rdata.priority, rdata.weight))
    if candidates:
        return candidates, ""
    if declined:
        return [], 'service explicitly not available (SRV target ".")'
    return [], "no answer (no SRV records in the response)"


async def find_kms_hosts(
    domain: str | None = None, *, resolver: dns.asyncresolver.Resolver | None = None
) -> list[KmsHostCandidate]:
    """The ``_vlmcs._tcp`` SRV records of ``domain``, sorted by (priority, weight, host, port).

    ``domain`` None means the resolver's search list (``search``/``domain`` from
    resolv.conf), tried in order; the first domain with usable records wins. A domain
    whose only record has target ``"."`` does not offer the service and the search
    goes on. Raises :class:`DiscoveryError` naming every SRV name tried and why it gave
    nothing.
    """
    if resolver is None:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.exception.DNSException as exc:
            raise DiscoveryError(f"cannot read the DNS resolver configuration: {exc}") from exc

    if domain is None:
        domains = _search_domains(resolver)
        if not domains:
            raise DiscoveryError(
                "no DNS search domain is configured; give a domain to search (--domain)"
            )
    else:
        try:
            domains = [_domain_name(domain)]
        except ValueError as exc:
            raise DiscoveryError(f"cannot search domain {domain!r}: {exc}") from exc

    attempts: list[tuple[str, str]] = []
    for search_domain in domains:
        try:
            qname = _srv_dns_name(search_domain)
        except ValueError as exc:
            attempts.append((f"{SRV_SERVICE}.{search_domain}", str(exc)))
            continue
        candidates, reason = await _lookup(resolver, qname)
        if candidates:
            # Canonical order, so what follows depends on the record set, not on the order
            # the server happened to return it in.
            return sorted(candidates, key=lambda c: (c.priority, c.weight, c.host, c.port))
        attempts.append((qname.to_text(), reason))

    tried = "; ".join(f"{name} -> {reason}" for name, reason in attempts)
    raise DiscoveryError(f"no KMS host found via DNS SRV: {tried}", attempts)


async def discover_kms_hosts(
    domain: str | None = None,
    *,
    resolver: dns.asyncresolver.Resolver | None = None,
    honour_priority: bool = True,
) -> list[KmsHostCandidate]:
    """The KMS hosts of :func:`find_kms_hosts` in the order to try them (see
    :func:`order_srv_records`)."""
    candidates = await find_kms_hosts(domain, resolver=resolver)
    return order_srv_records(candidates, honour_priority=honour_priority)


def parse_nameserver(text: str) -> Endpoint:
    """`ADDR`, `ADDR:PORT`, `[V6]:PORT` or a bare IPv6 address of a nameserver (port 53)."""
    return parse_endpoint(text, default_port=53, allow_names=False, what="nameserver")


def make_resolver(nameserver: str | None, timeout: float) -> dns.asyncresolver.Resolver | None:
    """A resolver asking only `nameserver`, bounded by `timeout`; None (the system's) if None."""
    if nameserver is None:
        return None
    server = parse_nameserver(nameserver)
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [server.host]
    resolver.port = server.port or 53
    resolver.timeout = min(timeout, 2.0)
    resolver.lifetime = timeout
    resolver.cache = None
    return resolver


async def resolve_addresses(resolver: dns.asyncresolver.Resolver, name: str) -> list[str]:
    """A and AAAA records of an SRV target through `resolver` (IP literals pass through)."""
    if is_ip_address(name):
        return [name]
    found: list[str] = []
    for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        try:
            answer = await resolver.resolve(name, rdtype, search=False)
        except dns.exception.DNSException:
            continue
        found.extend(rdata.address for rdata in answer)
    return found


@dataclass
class Discovered:
    """The SRV candidates in try order and the endpoints to connect to, in the same order."""

    endpoints: list[tuple[str, int]]
    via: str
    candidates: list[KmsHostCandidate] = field(default_factory=list)


async def discover_endpoints(
    domain: str | None, *, nameserver: str | None, timeout: float
) -> Discovered:
    """Discover KMS hosts; with `nameserver` their addresses are looked up there too."""
    resolver = make_resolver(nameserver, timeout)
    candidates = await discover_kms_hosts(domain, resolver=resolver)
    endpoints: list[tuple[str, int]] = []
    for candidate in candidates:
        if resolver is None:
            # The system resolver (getaddrinfo) resolves the target when connecting.
            endpoints.append((candidate.host, candidate.port))
            continue
        endpoints.extend(
            (address, candidate.port)
            for address in await resolve_addresses(resolver, candidate.host)
        )
    via = f"{SRV_SERVICE}.{domain}" if domain else f"{SRV_SERVICE} of the DNS search domains"
    return Discovered(endpoints, via, candidates)
