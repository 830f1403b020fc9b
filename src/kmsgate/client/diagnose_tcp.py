"""The tcp step: connect to each endpoint in turn and explain why an attempt failed."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Awaitable, Callable, Sequence

from kmsgate.client.diagnose_report import Finding, error_finding
from kmsgate.net import Endpoint
from kmsgate.protocol.hresult import HResult

__all__ = ["Connector", "Streams", "check_tcp", "open_tcp"]

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Connector = Callable[[str, int, float], Awaitable[Streams]]


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
        where = str(Endpoint(host, port))
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
            error_finding(
                "tcp",
                title,
                explanation + " Windows reports 0x800706BA, then 0xC004F074.",
                fix,
                hresult=HResult.RPC_SERVER_UNAVAILABLE,
                details={"endpoint": where_failed, "failure": kind},
            )
        )
    return findings, None
