"""Why a client cannot activate: DNS, TCP, RPC bind, the host's answer, policy, count, clock.

Each step (a diagnose_* module) is a function over injected I/O (a resolver, a connector, a
clock), returning findings: a status, what was seen, what it means and how to fix it. The RPC
and KMS work is the strict client's (ClientSession, ClientConnection): every byte of an answer
is verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid

from kmsgate.catalog import Catalog, Sku
from kmsgate.client.connection import DEFAULT_PORT, ClientConnection
from kmsgate.client.diagnose_answer import check_answer
from kmsgate.client.diagnose_dns import Resolver, check_dns
from kmsgate.client.diagnose_report import STEPS, Diagnosis, skipped_finding
from kmsgate.client.diagnose_rpc import check_bind
from kmsgate.client.diagnose_tcp import Connector, check_tcp, open_tcp
from kmsgate.client.exchange import Clock, RandomBytes, RequestTemplate
from kmsgate.dns.discovery import SRV_SERVICE
from kmsgate.net import Endpoint
from kmsgate.protocol.client_session import ClientSession

__all__ = ["DIAGNOSE_MACHINE_NAME", "diagnose", "diagnose_cmid", "diagnose_template"]

DIAGNOSE_MACHINE_NAME = "kmsgate-diagnose"


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
        target = str(Endpoint(host, port))
    else:
        target = f"{SRV_SERVICE}.{domain}" if domain else f"{SRV_SERVICE} (search domains)"
    run = Diagnosis(target, sku)
    found, endpoints = await check_dns(resolver, host=host, port=port, domain=domain)
    run.findings.extend(found)
    if not endpoints:
        run.findings.extend(skipped_finding(s, "no address to connect to") for s in STEPS[1:])
        return run
    found, connected = await check_tcp(connector, endpoints, timeout)
    run.findings.extend(found)
    if connected is None:
        run.findings.extend(skipped_finding(s, "no connection") for s in STEPS[2:])
        return run
    chosen_host, chosen_port, (reader, writer) = connected
    where = str(Endpoint(chosen_host, chosen_port))
    session = ClientSession()
    try:
        bound = await check_bind(reader, writer, session, where=where, timeout=timeout)
        run.findings.append(bound)
        if bound.status == "error":
            run.findings.extend(skipped_finding(s, "no RPC conversation") for s in STEPS[3:])
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
