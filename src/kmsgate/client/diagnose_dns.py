"""The dns step: where a client would connect, from SRV records or a host name."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import dns.asyncresolver

from kmsgate.client.diagnose_report import Finding, error_finding, skipped_finding
from kmsgate.dns.discovery import SRV_SERVICE, DiscoveryError, find_kms_hosts, resolve_addresses
from kmsgate.net import is_ip_address
from kmsgate.protocol.hresult import HResult

__all__ = ["DnsResolver", "Resolver", "SrvRecord", "check_dns"]


@dataclass(frozen=True, slots=True)
class SrvRecord:
    """One usable _vlmcs._tcp record and the addresses its target resolves to."""

    target: str
    port: int
    priority: int
    weight: int
    addresses: tuple[str, ...]


class Resolver(Protocol):
    """The DNS look-ups diagnose makes."""

    async def srv(self, domain: str | None) -> list[tuple[str, int, int, int]]:
        """(target, port, priority, weight) of the usable records; DiscoveryError if none."""
        ...

    async def addresses(self, name: str) -> list[str]:
        """A and AAAA addresses of `name` (empty when it does not resolve)."""
        ...


class DnsResolver:
    """dnspython's resolver; `nameserver_resolver` None means the system configuration."""

    def __init__(self, nameserver_resolver: dns.asyncresolver.Resolver | None = None) -> None:
        self._resolver = nameserver_resolver

    async def srv(self, domain: str | None) -> list[tuple[str, int, int, int]]:
        # Diagnose lists the records in priority order, it does not pick one.
        found = await find_kms_hosts(domain, resolver=self._resolver)
        return [(c.host, c.port, c.priority, c.weight) for c in found]

    async def addresses(self, name: str) -> list[str]:
        if self._resolver is None:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError):
                return []
            return list(dict.fromkeys(str(info[4][0]) for info in infos))
        return await resolve_addresses(self._resolver, name)


def _share(record: SrvRecord, records: Sequence[SrvRecord]) -> str:
    """How often a client tries this record first, within its priority (RFC 2782)."""
    same = [r for r in records if r.priority == record.priority]
    if len(same) == 1:
        return "the only record of its priority"
    total = sum(r.weight for r in same)
    if total == 0:
        return f"weight 0 like the others of its priority: 1 in {len(same)} first tries"
    if record.weight == 0:
        return "weight 0 beside weighted records: rarely tried first"
    return f"about {100 * record.weight / total:.0f} % of first tries within its priority"


async def check_dns(
    resolver: Resolver, *, host: str | None, port: int, domain: str | None
) -> tuple[list[Finding], list[tuple[str, int]]]:
    """Find where to connect: the SRV records of `domain` (None: the search list) or `host`.

    Returns the findings and the endpoints to try in order.
    """
    if host is not None:
        if is_ip_address(host):
            why = f"{host} is an address: no DNS look-up needed"
            return [skipped_finding("dns", why)], [(host, port)]
        addresses = await resolver.addresses(host)
        if not addresses:
            return [
                error_finding(
                    "dns",
                    f"{host} does not resolve",
                    f"DNS has no A or AAAA record for {host}, so a client told to use it "
                    "(slmgr /skms) cannot connect; Windows reports 0x8007007B or 0xC004F074.",
                    "Fix the name (a typo?) or add its A/AAAA record; `slmgr /skms` also "
                    "takes an address.",
                    hresult=HResult.BAD_NAME_SYNTAX,
                )
            ], []
        return [
            Finding(
                "dns",
                "ok",
                f"{host} resolves to {', '.join(addresses)}",
                details={"host": host, "addresses": addresses},
            )
        ], [(address, port) for address in addresses]

    where = f"{SRV_SERVICE}.{domain}" if domain else f"{SRV_SERVICE} in the DNS search domains"
    try:
        raw = await resolver.srv(domain)
    except DiscoveryError as exc:
        attempts = [{"name": name, "reason": reason} for name, reason in exc.attempts]
        declined = any("not available" in a["reason"] for a in attempts)
        if declined:
            why = (
                f'The only {where} record has target ".": the domain says it offers no KMS '
                "host, so clients find none (0x8007251D, then 0xC004F074)."
            )
        else:
            why = (
                f"Clients without a KMS host set look up {where} and find nothing, so they "
                "report 0x8007232B (then 0xC004F074)."
            )
        return [
            error_finding(
                "dns",
                f"no usable {where} record",
                f"{why} DNS said: {exc}.",
                "Publish a record (`kmsgate dns record --domain DOMAIN --host HOST`, or "
                "`dns_publish = true`) or set the host on each client (`slmgr /skms HOST`).",
                hresult=HResult.DNS_NO_RECORDS if declined else HResult.DNS_NAME_DOES_NOT_EXIST,
                details={"attempts": attempts},
            )
        ], []

    raw.sort(key=lambda r: (r[2], -r[3], r[0], r[1]))
    records = [
        SrvRecord(target, srv_port, priority, weight, tuple(await resolver.addresses(target)))
        for target, srv_port, priority, weight in raw
    ]
    findings: list[Finding] = []
    endpoints: list[tuple[str, int]] = []
    lines = []
    for record in records:
        endpoints.extend((address, record.port) for address in record.addresses)
        resolved = ", ".join(record.addresses) if record.addresses else "does not resolve"
        lines.append(
            f"{record.target}:{record.port} priority {record.priority} weight {record.weight} "
            f"({_share(record, records)}) -> {resolved}"
        )
    listing = [
        {
            "target": r.target,
            "port": r.port,
            "priority": r.priority,
            "weight": r.weight,
            "addresses": list(r.addresses),
        }
        for r in records
    ]
    dead = [r for r in records if not r.addresses]
    explanation = (
        "Clients try the lowest priority first and, within a priority, pick by weight. "
        + "; ".join(lines)
        + "."
    )
    if not endpoints:
        findings.append(
            error_finding(
                "dns",
                f"{where}: {len(records)} record(s), but no target resolves",
                explanation + " No target has an A or AAAA record, so clients cannot connect.",
                "Add A/AAAA records for the targets or point the SRV records at names that "
                "resolve.",
                hresult=HResult.BAD_NAME_SYNTAX,
                details={"records": listing},
            )
        )
    elif dead:
        findings.append(
            Finding(
                "dns",
                "warning",
                f"{where}: {len(records)} record(s), {len(dead)} target(s) do not resolve",
                explanation,
                "Fix or remove the records whose target does not resolve: clients waste time "
                "on them.",
                details={"records": listing},
            )
        )
    else:
        findings.append(
            Finding(
                "dns",
                "ok",
                f"{where}: {len(records)} record(s)",
                explanation,
                details={"records": listing},
            )
        )
    return findings, endpoints
