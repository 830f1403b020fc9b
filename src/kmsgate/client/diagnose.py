"""Why a client cannot activate: DNS, TCP, RPC bind, the host's answer, policy, count, clock.

Each step is a function over injected I/O (a resolver, a connector, a clock), returning
findings: a status, what was seen, what it means and how to fix it. The RPC and KMS work is
the strict client's (ClientSession, ClientConnection): every byte of an answer is verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import dns.asyncresolver
import dns.exception
import dns.rdatatype

from kmsgate.catalog import Catalog, Sku
from kmsgate.client.activation import (
    DEFAULT_PORT,
    ActivationResult,
    ClientConnection,
    KmsConnectionError,
    RequestTemplate,
    format_endpoint,
)
from kmsgate.dns.discovery import SRV_SERVICE, DiscoveryError, find_kms_hosts
from kmsgate.protocol.client_session import ClientSession
from kmsgate.protocol.engine import unix_from_filetime
from kmsgate.protocol.epid import parse_epid
from kmsgate.protocol.errors import (
    ActivationError,
    FramingError,
    ProtocolError,
    RpcFaultError,
    VerificationError,
)
from kmsgate.protocol.events import BindRejected, ClientEvent
from kmsgate.protocol.hresult import HResult, describe, explain
from kmsgate.protocol.messages import encode_request

__all__ = [
    "EXIT_CODES",
    "SCHEMA",
    "STEPS",
    "ClockEstimate",
    "Diagnosis",
    "DnsResolver",
    "Finding",
    "Resolver",
    "check_bind",
    "check_dns",
    "check_tcp",
    "classify_non_rpc",
    "diagnose",
    "open_tcp",
    "probe_clock",
]

SCHEMA = "kmsgate-diagnose/1"
Status = Literal["ok", "warning", "error", "skipped"]
STEPS = ("dns", "tcp", "rpc", "answer", "identity", "policy", "count", "clock")
#: Exit status of a run whose first error is in this step (0 all ok, 1 warnings, 2 usage).
EXIT_CODES = {
    "dns": 3,
    "tcp": 4,
    "rpc": 5,
    "answer": 6,
    "policy": 7,
    "clock": 8,
    "count": 9,
}
# A refusal's HRESULT names the step that explains it.
_REFUSAL_STEP: dict[int, str] = {
    HResult.PRODUCT_NOT_ALLOWED: "policy",
    HResult.TIME_SKEW: "clock",
    HResult.COUNT_INSUFFICIENT: "count",
}
# What a refusal leaves unknown, per step.
_NOT_IN_REFUSAL = {
    "identity": "a refusal carries no ePID",
    "policy": "the host refused before (or without) judging the product",
    "count": "a refusal carries no client count",
    "clock": "the host refused for another reason than the time stamp",
}
DIAGNOSE_MACHINE_NAME = "kmsgate-diagnose"
# A genuine client's activation lasts 180 days; a longer renewal interval lets it lapse.
ACTIVATION_VALIDITY_MINUTES = 180 * 24 * 60
_READ_SIZE = 4096
_SNIFF_BYTES = 512

Clock = Callable[[], float]
RandomBytes = Callable[[int], bytes]
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Connector = Callable[[str, int, float], Awaitable[Streams]]


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing diagnose looked at: status, what it saw, what that means, how to fix it."""

    step: str
    status: Status
    title: str
    explanation: str = ""
    fix: str = ""
    hresult: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    exit_code: int = 0  # for an error: the code the run exits with if it is the first

    def to_json(self) -> dict[str, Any]:
        """The finding in the stable JSON schema."""
        return {
            "step": self.step,
            "status": self.status,
            "title": self.title,
            "explanation": self.explanation,
            "fix": self.fix or None,
            "hresult": None if self.hresult is None else f"0x{self.hresult:08X}",
            "details": dict(self.details),
        }


def _error(step: str, title: str, explanation: str, fix: str = "", **kw: Any) -> Finding:
    code = kw.pop("exit_code", EXIT_CODES[step])
    return Finding(step, "error", title, explanation, fix, exit_code=code, **kw)


def _skipped(step: str, why: str) -> Finding:
    return Finding(step, "skipped", why)


@dataclass(slots=True)
class Diagnosis:
    """Every finding of one run, in step order."""

    target: str
    product: Sku
    findings: list[Finding] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """The first error's code; else 1 with warnings, 0 when everything is fine."""
        for finding in self.findings:
            if finding.status == "error":
                return finding.exit_code
        return 1 if any(f.status == "warning" for f in self.findings) else 0

    def to_json(self) -> dict[str, Any]:
        """The whole run in the stable JSON schema (`kmsgate-diagnose/1`)."""
        return {
            "schema": SCHEMA,
            "target": self.target,
            "product": {
                "sku_id": str(self.product.id),
                "name": self.product.name,
                "kms_id": str(self.product.kms_id),
                "n_count": self.product.n_count_policy,
            },
            "ok": self.exit_code == 0,
            "exit_code": self.exit_code,
            "findings": [f.to_json() for f in self.findings],
        }


# ---------------------------------------------------------------------------------- DNS


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
        found: list[str] = []
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                answer = await self._resolver.resolve(name, rdtype, search=False)
            except dns.exception.DNSException:
                continue
            found.extend(str(rdata.address) for rdata in answer)
        return found


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


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
        if _is_address(host):
            return [_skipped("dns", f"{host} is an address: no DNS look-up needed")], [(host, port)]
        addresses = await resolver.addresses(host)
        if not addresses:
            return [
                _error(
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
            _error(
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
            _error(
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


# ---------------------------------------------------------------------------------- TCP


async def open_tcp(host: str, port: int, timeout: float) -> Streams:
    """The default connector: a TCP connection within `timeout` seconds."""
    async with asyncio.timeout(timeout):
        return await asyncio.open_connection(host, port)


def _tcp_failure(exc: BaseException, where: str, timeout: float) -> tuple[str, str, str, str]:
    """(kind, title, explanation, fix) of a failed connection attempt."""
    if isinstance(exc, TimeoutError):
        return (
            "timeout",
            f"{where}: no answer within {timeout:g} s",
            "The connection attempt got no reply at all: a firewall on the way drops the "
            "packets silently, the host is down or overloaded, or the address is wrong.",
            "Check the firewalls between client and host (TCP 1688 must be open) and that "
            "the host is up at that address.",
        )
    if isinstance(exc, socket.gaierror):
        return (
            "unresolvable",
            f"{where}: the name does not resolve",
            f"The name could not be resolved ({exc.strerror}).",
            "Fix the name or its DNS record.",
        )
    code = exc.errno if isinstance(exc, OSError) else None
    if isinstance(exc, ConnectionRefusedError) or code == errno.ECONNREFUSED:
        return (
            "refused",
            f"{where}: connection refused",
            "The host answered that nothing listens on that port (or a firewall rejects "
            "the connection with a reset): the KMS service is not running there, listens "
            "on another address or port, or is blocked.",
            "Start the service (`systemctl status kmsgate`), check its listen addresses "
            "(`ss -ltnp | grep 1688`) and the host firewall.",
        )
    if code in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return (
            "unreachable",
            f"{where}: {'host' if code == errno.EHOSTUNREACH else 'network'} unreachable",
            "A router or firewall reported that the address cannot be reached: a routing "
            "problem, a firewall rejecting with ICMP, or a host that is down.",
            "Check the route from the client (`tracert`/`traceroute`) and the firewalls.",
        )
    reason = os.strerror(code) if code else str(exc) or type(exc).__name__
    return (
        "failed",
        f"{where}: {reason.lower()}",
        "The connection could not be opened.",
        "Check the address, the port and the network between client and host.",
    )


async def check_tcp(
    connector: Connector, endpoints: Sequence[tuple[str, int]], timeout: float
) -> tuple[list[Finding], tuple[str, int, Streams] | None]:
    """Connect to each endpoint in order until one accepts, as a Windows client does."""
    findings: list[Finding] = []
    failures: list[tuple[str, str, str, str, str]] = []
    for host, port in endpoints:
        where = format_endpoint(host, port)
        try:
            streams = await connector(host, port, timeout)
        except (OSError, TimeoutError) as exc:
            failures.append((where, *_tcp_failure(exc, where, timeout)))
            continue
        for where_failed, kind, title, explanation, fix in failures:
            findings.append(
                Finding(
                    "tcp",
                    "warning",
                    title,
                    explanation + " Clients move on to the next host, after a delay.",
                    fix,
                    HResult.RPC_SERVER_UNAVAILABLE,
                    {"endpoint": where_failed, "failure": kind},
                )
            )
        findings.append(
            Finding(
                "tcp",
                "ok",
                f"{where} accepts TCP connections",
                details={"endpoint": where},
            )
        )
        return findings, (host, port, streams)
    for where_failed, kind, title, explanation, fix in failures:
        findings.append(
            _error(
                "tcp",
                title,
                explanation + " Windows reports 0x800706BA, then 0xC004F074.",
                fix,
                hresult=HResult.RPC_SERVER_UNAVAILABLE,
                details={"endpoint": where_failed, "failure": kind},
            )
        )
    return findings, None


# ----------------------------------------------------------------------------- RPC bind


def classify_non_rpc(data: bytes) -> tuple[str, str]:
    """(what the service is, why) for bytes that are not a DCE-RPC answer."""
    if data.startswith(b"HTTP/"):
        status = data.split(b"\r\n", 1)[0].decode("latin-1", "replace")
        return "http", f"that port speaks HTTP, not KMS (it answered {status!r})"
    if len(data) >= 3 and data[0] in (0x15, 0x16) and data[1] == 0x03:
        return "tls", "that port speaks TLS, not KMS (it answered with a TLS record)"
    if data.startswith(b"SSH-"):
        return "ssh", "that port is an SSH server, not KMS"
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    if line and all(32 <= b < 127 for b in line):
        text = line[:80].decode("ascii")
        return "text", f"that port speaks a text protocol, not KMS (it said {text!r})"
    return "binary", f"that port answered {len(data)} bytes that are not DCE-RPC"


_CLOSED_EXPLANATION = (
    "The service accepted the connection but closed it without answering the RPC bind. "
    "kmsgate does this for an address outside its source policy (allow/deny), in gateway "
    "mode when no activation window is open for the address (log in on the portal first), "
    "and at max_connections; any other service may do it too. Windows reports 0x800706BA."
)


async def check_bind(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    session: ClientSession,
    *,
    where: str,
    timeout: float,
) -> Finding:
    """Send the RPC bind (NDR32, NDR64, BTFN) and say what came back."""
    seen = bytearray()

    async def answer(what: str) -> ClientEvent | None:
        """Send what the session queued until its answer; None when the reply is not RPC."""
        data = b""
        while True:
            try:
                events = session.receive_data(data)
            except FramingError:
                return None
            if outgoing := session.data_to_send():
                writer.write(outgoing)
            if events:
                return events[0]
            if session.awaiting_alter_context:
                what = "alter_context"
            data = await reader.read(_READ_SIZE)
            if not data:
                raise ConnectionResetError(f"closed during the {what}")
            if len(seen) < _SNIFF_BYTES:
                seen.extend(data[: _SNIFF_BYTES - len(seen)])

    hresult = HResult.RPC_SERVER_UNAVAILABLE
    try:
        async with asyncio.timeout(timeout):
            session.send_bind()
            event = await answer("bind")
            if isinstance(event, BindRejected):
                return _error(
                    "rpc",
                    f"{where} refused the RPC bind (bind_nak, reason {event.reason})",
                    "An RPC server answered but refused the bind as a whole: it is not a KMS "
                    "host, or it is overloaded (reason 1 or 2).",
                    "Point the client at the KMS host's address and port.",
                    hresult=hresult,
                    details={"bind_nak_reason": event.reason},
                )
    except TimeoutError:
        if seen:
            kind, why = classify_non_rpc(bytes(seen))
            return _not_kms(where, kind, why, bytes(seen))
        return _error(
            "rpc",
            f"{where} did not answer the RPC bind within {timeout:g} s",
            "The service accepted the connection but stayed silent: it waits for another "
            "protocol (a web or TLS server waiting for its request), or it is overloaded.",
            "Check that the port belongs to the KMS host (`ss -ltnp` on the host).",
            hresult=hresult,
        )
    except (ConnectionResetError, OSError) as exc:
        if seen:
            kind, why = classify_non_rpc(bytes(seen))
            return _not_kms(where, kind, why, bytes(seen))
        return _error(
            "rpc",
            f"{where} closed the connection without answering the bind",
            _CLOSED_EXPLANATION,
            "Check the host's log for this machine's address (`kmsgate` logs why it closed "
            "a connection), the source policy and, in gateway mode, the portal login.",
            hresult=hresult,
            details={"reason": str(exc)},
        )
    except ProtocolError as exc:
        return _error(
            "rpc",
            f"{where} answered the bind with an invalid RPC reply",
            f"The reply is DCE-RPC but breaks the protocol: {exc}. A genuine or emulated KMS "
            "host does not do this; something else listens there.",
            "Point the client at the KMS host's address and port.",
            hresult=hresult,
        )
    if event is None:
        kind, why = classify_non_rpc(bytes(seen))
        return _not_kms(where, kind, why, bytes(seen))
    details: dict[str, Any] = {
        "ndr32": session.ndr32_accepted,
        "ndr64": session.ndr64_accepted,
        "btfn": session.btfn_bits,
        "warnings": list(session.warnings),
    }
    syntaxes = [
        name
        for name, accepted in (("NDR32", session.ndr32_accepted), ("NDR64", session.ndr64_accepted))
        if accepted
    ]
    btfn = "acknowledged" if session.btfn_bits is not None else "not acknowledged"
    title = f"RPC bind accepted: {' and '.join(syntaxes)}, BTFN {btfn}"
    explanation = (
        "The service speaks DCE-RPC and accepts the KMS interface. Windows 8 and later "
        "offer NDR64 and bind-time feature negotiation; older clients use NDR32 only, so "
        "a host without NDR64 still serves everyone."
    )
    if session.warnings:
        return Finding(
            "rpc",
            "warning",
            title,
            explanation + " Oddities: " + "; ".join(session.warnings) + ".",
            "Genuine clients tolerate these, but a genuine host does not produce them.",
            details=details,
        )
    return Finding("rpc", "ok", title, explanation, details=details)


def _not_kms(where: str, kind: str, why: str, seen: bytes) -> Finding:
    return _error(
        "rpc",
        f"{where}: {why}",
        "A KMS host answers the RPC bind with a bind_ack; this service answered something "
        "else, so clients fail with 0x800706BA. Often the port of a web server, a proxy or "
        "the dashboard was given instead of the KMS port (1688 by default).",
        "Use the KMS host's address and KMS port (`slmgr /skms HOST:1688`).",
        hresult=HResult.RPC_SERVER_UNAVAILABLE,
        details={"service": kind, "first_bytes": seen[:64].hex()},
    )


# ---------------------------------------------------------------------- KMS answer


@dataclass(frozen=True, slots=True)
class ClockEstimate:
    """Where the host's clock lies relative to ours, from which time stamps it accepted."""

    near_edge: float  # the smallest shift of our time stamp the host accepts (seconds)
    far_edge: float | None  # the other end of the accepted range, when found
    probes: int

    @property
    def host_offset(self) -> float:
        """Host clock minus ours (seconds): the middle of the accepted range."""
        if self.far_edge is None:
            return self.near_edge
        return (self.near_edge + self.far_edge) / 2

    @property
    def tolerance(self) -> float | None:
        """The skew the host allows (seconds), when both edges were found."""
        return None if self.far_edge is None else abs(self.far_edge - self.near_edge) / 2


#: Shifts tried to find one time stamp the host accepts: hours (time zones), then days.
COARSE_SHIFTS = tuple(
    sign * hours * 3600
    for hours in (*range(4, 25, 4), 48, 72, 96, 120, 144, 168, 720, 8760)
    for sign in (1, -1)
)


async def probe_clock(
    accepts: Callable[[float], Awaitable[bool | None]],
    *,
    precision: float = 60.0,
    max_probes: int = 64,
) -> ClockEstimate | None:
    """Find the range of time-stamp shifts the host accepts; None if none was found.

    `accepts(shift)` sends a request stamped `now + shift`: True accepted, False refused for
    its time stamp, None when the probing must stop (connection lost, other failure).
    """
    probes = 0

    async def ask(shift: float) -> bool | None:
        nonlocal probes
        probes += 1
        return await accepts(shift)

    hit: float | None = None
    for shift in COARSE_SHIFTS:
        if probes >= max_probes:
            return None
        answer = await ask(shift)
        if answer is None:
            return None
        if answer:
            hit = shift
            break
    if hit is None:
        return None
    sign = 1.0 if hit > 0 else -1.0

    async def edge(accepted: float, refused: float) -> float | None:
        # Bisect between an accepted and a refused shift: the boundary, to `precision`.
        while abs(accepted - refused) > precision:
            if probes >= max_probes:
                return None
            middle = (accepted + refused) / 2
            answer = await ask(middle)
            if answer is None:
                return None
            if answer:
                accepted = middle
            else:
                refused = middle
        return accepted

    near = await edge(hit, 0.0)
    if near is None:
        return ClockEstimate(hit, None, probes)
    step, accepted, far = 3600.0, hit, None
    while step <= 16 * 24 * 3600 and probes < max_probes:
        answer = await ask(accepted + sign * step)
        if answer is None:
            break
        if answer:
            accepted += sign * step
            step *= 2
            continue
        far = await edge(accepted, accepted + sign * step)
        break
    return ClockEstimate(near, far, probes)


def _duration(seconds: float) -> str:
    """`6 h 2 min`, `45 min`, `3 d 4 h`, to the minute."""
    minutes = round(abs(seconds) / 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    parts = [f"{days} d"] if days else []
    if hours:
        parts.append(f"{hours} h")
    if mins or not parts:
        parts.append(f"{mins} min")
    return " ".join(parts)


def _utc_text(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(slots=True)
class _Asker:
    """Sends requests on one bound connection, stamped with the (shifted) local clock."""

    conn: ClientConnection
    template: RequestTemplate
    clock: Clock
    random_bytes: RandomBytes

    async def send(self, shift: float = 0.0) -> ActivationResult:
        request = self.template.build(self.random_bytes, self.clock() + shift)
        message = encode_request(request, self.random_bytes(16))
        return await self.conn.send_message(request, message, strict=False)

    async def accepts(self, shift: float) -> bool | None:
        try:
            await self.send(shift)
        except ActivationError as exc:
            # Any other refusal means the host got past its time check.
            return exc.hresult != HResult.TIME_SKEW
        except (ProtocolError, KmsConnectionError):
            return None
        return True


def _hresult_finding(step: str, hresult: int, title: str, *, exit_code: int) -> Finding:
    info = explain(hresult)
    return _error(
        step,
        title,
        info.cause
        if info
        else f"The host answered {describe(hresult)}, a code kmsgate does not know.",
        info.fix if info else "Look the code up in the host's documentation.",
        hresult=hresult,
        exit_code=exit_code,
    )


def _identity(result: ActivationResult, catalog: Catalog, sku: Sku) -> Finding:
    """The ePID (and v6 HWID) decoded: host build, CSVLK group, whether it covers the product."""
    epid_text = result.response.epid
    details: dict[str, Any] = {"epid": epid_text}
    if result.hwid is not None:
        details["hwid"] = result.hwid.hex().upper()
    try:
        epid = parse_epid(epid_text)
    except ValueError as exc:
        return Finding(
            "identity",
            "warning",
            f"ePID {epid_text!r} is not well formed",
            f"{exc}. Windows does not check the ePID, but a genuine host always sends a "
            "well-formed one, so this host is an emulator with unusual settings.",
            details=details,
        )
    build = catalog.host_build(epid.build)
    keys = [c for c in catalog.csvlks if c.group_id == epid.group_id and c.has_key_id(epid.key_id)]
    details.update(
        platform_id=epid.platform_id,
        group_id=epid.group_id,
        key_id=epid.key_id,
        lcid=epid.lcid,
        host_build=epid.build,
        host_os=build.name if build else None,
        activation_date=epid.activation_date.isoformat(),
        csvlk=[c.name for c in keys],
    )
    os_text = build.name if build else f"an unknown build {epid.build}"
    key_text = ", ".join(c.name for c in keys) if keys else f"an unknown group {epid.group_id}"
    title = f"host key {key_text} on {os_text}"
    explanation = (
        f"The ePID names the host's key group {epid.group_id} (key id {epid.key_id}), its "
        f"OS build {epid.build} and an activation date of {epid.activation_date}."
    )
    covers = any(sku.kms_id in c.activates_kms_ids for c in keys)
    if keys and not covers:
        return Finding(
            "identity",
            "warning",
            title,
            explanation + f" A genuine host with that key could not activate {sku.name}; "
            "Windows does not check, but the ePID does not match the product.",
            "kmsgate picks a fitting ePID unless one is fixed with --epid; a fixed one "
            "should come from a key that covers every product served.",
            details=details,
        )
    if not keys or build is None:
        return Finding(
            "identity",
            "warning",
            title,
            explanation + " The key group or build is not in kmsgate's catalogue; Windows "
            "does not check it.",
            details=details,
        )
    return Finding("identity", "ok", title, explanation, details=details)


def _answer_finding(result: ActivationResult, sku: Sku, where: str) -> Finding:
    request, response = result.request, result.response
    details: dict[str, Any] = {
        "protocol": f"{request.major_version}.{request.minor_version}",
        "syntax": result.syntax.value,
        "latency_ms": round(result.latency * 1000, 3),
        "machine_name": request.machine_name,
        "client_machine_id": str(request.client_machine_id),
        "request_time_utc": _utc_text(unix_from_filetime(request.request_time)),
        "activation_interval": response.activation_interval,
        "renewal_interval": response.renewal_interval,
        "checks": {c.name: c.passed for c in result.checks},
    }
    failed = [c for c in result.checks if not c.passed and c.name != "client_count"]
    fatal = [c for c in failed if c.fatal]
    intervals = (
        f"Not yet activated clients retry every {_duration(response.activation_interval * 60)}, "
        f"activated ones renew every {_duration(response.renewal_interval * 60)}."
    )
    if fatal:
        listed = "; ".join(f"{c.name}: {c.detail}" for c in fatal)
        return _error(
            "answer",
            f"{where} answered, but the answer fails the client's checks",
            f"Windows rejects an answer that does not verify ({listed}): the host's "
            "implementation is broken, or something on the way altered the traffic.",
            "Try another protocol version (--protocol) and compare with kmsgate as the host.",
            hresult=HResult.NO_KMS_CONTACTED,
            details=details,
        )
    title = (
        f"{where} answered {sku.name} over KMS v{request.major_version} "
        f"({result.syntax.value}) in {result.latency * 1000:.1f} ms"
    )
    explanation = "Every byte of the answer verified. " + intervals
    if response.renewal_interval >= ACTIVATION_VALIDITY_MINUTES:
        return Finding(
            "answer",
            "warning",
            title,
            explanation + " That renewal interval is not shorter than the 180 days an "
            "activation lasts, so clients would lapse before they renew.",
            "Lower renewal_interval (the default is 7 days: 10080 minutes).",
            details=details,
        )
    if failed:
        listed = "; ".join(f"{c.name}: {c.detail}" for c in failed)
        return Finding(
            "answer",
            "warning",
            title,
            explanation + f" Minor oddities that Windows tolerates: {listed}.",
            details=details,
        )
    return Finding("answer", "ok", title, explanation, details=details)


def _count_finding(result: ActivationResult) -> Finding:
    count = result.response.current_client_count
    needed = result.request.required_client_count
    details = {"current_client_count": count, "required": needed}
    if count < needed:
        info = explain(HResult.COUNT_INSUFFICIENT)
        assert info is not None
        return _error(
            "count",
            f"the host counts {count} client(s); this product needs {needed}",
            f"Windows activates only when the host has seen at least {needed} machines "
            f"for this product group, and reports 0xC004F038 otherwise. {info.cause}",
            info.fix,
            hresult=HResult.COUNT_INSUFFICIENT,
            details=details,
        )
    return Finding(
        "count",
        "ok",
        f"the host counts {count} client(s); this product needs {needed}",
        f"Windows needs a count of at least {needed} before it activates (0xC004F038 otherwise).",
        details=details,
    )


def _clock_ok(sent: float, shift: float) -> Finding:
    details = {"request_time_utc": _utc_text(sent), "shift_seconds": shift}
    text = (
        "A KMS answer echoes the client's time stamp instead of carrying the host's clock, "
        "so the host's clock cannot be read; the host accepted this one. A genuine host "
        "refuses time stamps more than 4 hours off its clock (0xC004F06C), kmsgate only "
        "with max_clock_skew."
    )
    title = f"the host accepted the time stamp {_utc_text(sent)}"
    if shift:
        title += f" (this machine's clock shifted by {shift:+g} s)"
    return Finding("clock", "ok", title, text, details=details)


async def _clock_skew(asker: _Asker, shift: float, probe: bool) -> Finding:
    info = explain(HResult.TIME_SKEW)
    assert info is not None
    sent = asker.clock() + shift
    details: dict[str, Any] = {"request_time_utc": _utc_text(sent), "shift_seconds": shift}
    title = f"the host refused the time stamp {_utc_text(sent)} (0xC004F06C)"
    if not probe:
        return _error(
            "clock", title, info.cause, info.fix, hresult=HResult.TIME_SKEW, details=details
        )
    estimate = await probe_clock(lambda extra: asker.accepts(shift + extra))
    if estimate is None:
        details["probes"] = "no accepted time stamp found within a year either way"
        return _error(
            "clock",
            title,
            info.cause + " Requests stamped up to a year earlier or later were refused "
            "too, so the host's window is narrow or it refuses for another reason.",
            info.fix,
            hresult=HResult.TIME_SKEW,
            details=details,
        )
    offset = estimate.host_offset
    direction = "ahead of" if offset > 0 else "behind"
    details.update(
        host_offset_seconds=round(offset),
        tolerance_seconds=None if estimate.tolerance is None else round(estimate.tolerance),
        probes=estimate.probes,
    )
    measured = f"the host's clock is about {_duration(offset)} {direction} this machine's"
    if estimate.tolerance is not None:
        measured += f", and it allows {_duration(estimate.tolerance)} of difference"
    return _error(
        "clock",
        title,
        f"{info.cause} Probing with shifted time stamps ({estimate.probes} requests): {measured}.",
        info.fix,
        hresult=HResult.TIME_SKEW,
        details=details,
    )


def _policy_ok(sku: Sku, catalog: Catalog) -> Finding:
    kms = catalog.kms_id(sku.kms_id)
    group = kms.name if kms else str(sku.kms_id)
    return Finding(
        "policy",
        "ok",
        f"the host serves {sku.name}",
        f"Its product policy lets the KMS id {group} through.",
        details={"sku_id": str(sku.id), "kms_id": str(sku.kms_id)},
    )


async def check_answer(
    conn: ClientConnection,
    template: RequestTemplate,
    sku: Sku,
    catalog: Catalog,
    *,
    clock: Clock,
    shift: float = 0.0,
    random_bytes: RandomBytes = os.urandom,
    probe_skew: bool = True,
) -> list[Finding]:
    """Ask the host for `sku` and explain its answer: identity, policy, count and clock."""
    where = format_endpoint(conn.host, conn.port)
    asker = _Asker(conn, template, clock, random_bytes)
    later = ("identity", "policy", "count", "clock")
    try:
        result = await asker.send(shift)
    except ActivationError as exc:
        hresult = exc.hresult
        step = _REFUSAL_STEP.get(hresult)
        code = EXIT_CODES[step] if step else EXIT_CODES["answer"]
        findings = [
            _error(
                "answer",
                f"{where} refused the request: {describe(hresult)}",
                f"The {step} step below explains it." if step else "",
                hresult=hresult,
                exit_code=code,
            )
            if step
            else _hresult_finding(
                "answer", hresult, f"{where} refused the request: {describe(hresult)}",
                exit_code=code,
            )
        ]  # fmt: skip
        for name in later:
            if name == step == "clock":
                findings.append(await _clock_skew(asker, shift, probe_skew))
            elif name == step:
                findings.append(
                    _hresult_finding(
                        name,
                        hresult,
                        f"the host refuses {sku.name}: {describe(hresult)}",
                        exit_code=code,
                    )
                )
            else:
                findings.append(_skipped(name, _NOT_IN_REFUSAL[name]))
        return findings
    except RpcFaultError as exc:
        failure = _error(
            "answer",
            f"{where} answered the request with an RPC fault {describe(exc.status)}",
            "The RPC server took the bind but failed the call: it is not a working KMS "
            "host (an RPC service without the KMS operation, or a broken emulator).",
            "Point the client at a KMS host.",
            hresult=HResult.RPC_SERVER_UNAVAILABLE,
            details={"fault_status": f"0x{exc.status:08X}"},
        )
        return [failure, *(_skipped(n, "no answer to look at") for n in later)]
    except VerificationError as exc:
        failure = _error(
            "answer",
            f"{where} answered with a message that does not verify",
            f"The answer failed the {exc.check} check ({exc.detail}): the host's "
            "implementation is broken, or something on the way altered the traffic.",
            "Try another protocol version (--protocol) and compare with kmsgate as the host.",
            hresult=HResult.NO_KMS_CONTACTED,
        )
        return [failure, *(_skipped(n, "no usable answer") for n in later)]
    except (ProtocolError, KmsConnectionError) as exc:
        failure = _error(
            "answer",
            f"{where} did not answer the request properly",
            f"{exc}. The host took the bind but failed the KMS request itself.",
            "Check the host's log for this machine's address.",
            hresult=HResult.RPC_SERVER_UNAVAILABLE,
        )
        return [failure, *(_skipped(n, "no answer to look at") for n in later)]
    return [
        _answer_finding(result, sku, where),
        _identity(result, catalog, sku),
        _policy_ok(sku, catalog),
        _count_finding(result),
        _clock_ok(unix_from_filetime(result.request.request_time), shift),
    ]


# ---------------------------------------------------------------------------------- run


async def diagnose(
    *,
    host: str | None,
    port: int = DEFAULT_PORT,
    domain: str | None = None,
    sku: Sku,
    template: RequestTemplate,
    catalog: Catalog,
    resolver: Resolver,
    connector: Connector = open_tcp,
    clock: Clock = time.time,
    clock_shift: float = 0.0,
    timeout: float = 5.0,
    probe_skew: bool = True,
    random_bytes: RandomBytes = os.urandom,
) -> Diagnosis:
    """Run every step in order; a failing step leaves the later ones skipped."""
    if host is not None:
        target = format_endpoint(host, port)
    else:
        target = f"{SRV_SERVICE}.{domain}" if domain else f"{SRV_SERVICE} (search domains)"
    run = Diagnosis(target, sku)
    found, endpoints = await check_dns(resolver, host=host, port=port, domain=domain)
    run.findings.extend(found)
    if not endpoints:
        run.findings.extend(_skipped(s, "no address to connect to") for s in STEPS[1:])
        return run
    found, connected = await check_tcp(connector, endpoints, timeout)
    run.findings.extend(found)
    if connected is None:
        run.findings.extend(_skipped(s, "no connection") for s in STEPS[2:])
        return run
    chosen_host, chosen_port, (reader, writer) = connected
    where = format_endpoint(chosen_host, chosen_port)
    session = ClientSession()
    try:
        bound = await check_bind(reader, writer, session, where=where, timeout=timeout)
        run.findings.append(bound)
        if bound.status == "error":
            run.findings.extend(_skipped(s, "no RPC conversation") for s in STEPS[3:])
            return run
        conn = ClientConnection(chosen_host, chosen_port, reader, writer, session, timeout)
        run.findings.extend(
            await check_answer(
                conn,
                template,
                sku,
                catalog,
                clock=clock,
                shift=clock_shift,
                random_bytes=random_bytes,
                probe_skew=probe_skew,
            )
        )
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(timeout):
                await writer.wait_closed()
    return run


def diagnose_cmid(machine: str) -> uuid.UUID:
    """The CMID diagnose sends from `machine`: repeated runs count as one client."""
    return uuid.uuid5(uuid.NAMESPACE_DNS, f"{DIAGNOSE_MACHINE_NAME}.{machine}")


def diagnose_template(sku: Sku, *, protocol: int | None, cmid: uuid.UUID) -> RequestTemplate:
    """The request diagnose sends: a recognisable machine name and a fixed CMID."""
    return RequestTemplate.from_sku(
        sku, protocol=protocol, client_machine_id=cmid, machine_name=DIAGNOSE_MACHINE_NAME
    )
