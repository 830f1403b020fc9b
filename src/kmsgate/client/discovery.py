"""KMS host discovery through DNS SRV records (``_vlmcs._tcp.<domain>``, RFC 2782).

A KMS client that is not told which host to use looks up ``_vlmcs._tcp`` SRV
records in its DNS search domain(s) and tries the targets in the order RFC 2782
prescribes: lowest priority first, and within one priority a weighted random
choice (weight 0 entries get a small but non-zero chance of being first).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
from dns.rdtypes.IN.SRV import SRV

from kmsgate.errors import KmsgateError

__all__ = [
    "SRV_SERVICE",
    "DiscoveryError",
    "KmsHostCandidate",
    "discover_kms_hosts",
    "order_srv_records",
    "srv_name",
]

#: Service/protocol labels prepended to a domain to form the SRV owner name.
SRV_SERVICE = "_vlmcs._tcp"


@dataclass(frozen=True)
class KmsHostCandidate:
    """One KMS host advertised by an SRV record."""

    host: str  # target name without trailing dot
    port: int
    priority: int
    weight: int


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


def _weighted_order(group: list[KmsHostCandidate], rng: random.Random) -> list[KmsHostCandidate]:
    """Order records of one priority by RFC 2782 weighted random selection."""
    pending = list(group)
    # RFC 2782 lets the unordered records be arranged in any order as long as the
    # weight 0 ones come first; shuffling first spreads the (rare) picks of weight 0
    # records fairly among them.
    rng.shuffle(pending)
    pending.sort(key=lambda c: c.weight != 0)
    ordered: list[KmsHostCandidate] = []
    while pending:
        total = sum(c.weight for c in pending)
        pick = rng.randint(0, total)  # inclusive on both ends, as RFC 2782 says
        running = 0
        chosen = len(pending) - 1
        for index, candidate in enumerate(pending):
            running += candidate.weight
            if running >= pick:
                chosen = index
                break
        ordered.append(pending.pop(chosen))
    return ordered


def order_srv_records(
    records: Sequence[KmsHostCandidate],
    rng: random.Random,
    *,
    honour_priority: bool = True,
) -> list[KmsHostCandidate]:
    """Return ``records`` in the order a client should try them.

    With ``honour_priority`` (the default) this is the RFC 2782 algorithm: ascending
    priority, weighted random order within each priority. Without it the records are
    simply shuffled (vlmcs ``-P``). Pure: the result depends only on the input order
    and the state of ``rng``.
    """
    items = list(records)
    if not honour_priority:
        rng.shuffle(items)
        return items
    items.sort(key=lambda c: c.priority)  # stable: keeps input order within a priority
    ordered: list[KmsHostCandidate] = []
    for _, group in groupby(items, key=lambda c: c.priority):
        ordered.extend(_weighted_order(list(group), rng))
    return ordered


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


async def discover_kms_hosts(
    domain: str | None = None,
    *,
    resolver: dns.asyncresolver.Resolver | None = None,
    rng: random.Random | None = None,
    honour_priority: bool = True,
) -> list[KmsHostCandidate]:
    """Find KMS hosts advertised as ``_vlmcs._tcp`` SRV records.

    ``domain`` None means the resolver's search list (``search``/``domain`` from
    resolv.conf), tried in order; the first domain with usable records wins. A domain
    whose only record has target ``"."`` does not offer the service and the search
    goes on. Returns candidates in the order they should be tried (see
    :func:`order_srv_records`). Raises :class:`DiscoveryError` naming every SRV name
    tried and why it gave nothing.
    """
    if resolver is None:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.exception.DNSException as exc:
            raise DiscoveryError(f"cannot read the DNS resolver configuration: {exc}") from exc
    if rng is None:
        rng = random.SystemRandom()

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
            # Canonical order first, so the result depends only on the rng and the
            # record set, not on the order the server happened to return them in.
            candidates.sort(key=lambda c: (c.priority, c.weight, c.host, c.port))
            return order_srv_records(candidates, rng, honour_priority=honour_priority)
        attempts.append((qname.to_text(), reason))

    tried = "; ".join(f"{name} -> {reason}" for name, reason in attempts)
    raise DiscoveryError(f"no KMS host found via DNS SRV: {tried}", attempts)
