"""G8: a relayed client cannot make the gateway lose track of what the upstream served.

The relay spends a window on the served activation its passive observer decodes. A client
that makes the observer pair an answer with the wrong call (a call id reused, a context's
syntax changed by alter_context, more calls in flight than it remembers) must get nothing
served uncounted: one login, one machine, against a real upstream kmsgate host.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from kmsgate.protocol import ndr, rpc
from kmsgate.protocol.errors import ProtocolError
from kmsgate.protocol.framing import PduFramer
from kmsgate.protocol.messages import encode_request
from kmsgate.protocol.ndr import TransferSyntax
from tests.adversarial.gateway_util import (
    activate_from,
    add_user,
    audit,
    connect,
    gateway_node,
    portal_login,
    wait_for,
    windows_request,
)
from tests.support.kms import RawClient
from tests.support.store_node import node

pytestmark = pytest.mark.integration

NDR32, NDR64 = TransferSyntax.NDR32, TransferSyntax.NDR64
JUNK_STUB = b"\x04\x00\x00\x00\x04\x00\x00\x00JUNK"


def bind(
    call_id: int, contexts: tuple[tuple[int, rpc.SyntaxId], ...], alter: bool = False
) -> bytes:
    elements = tuple(
        rpc.ContextElement(context, rpc.KMS_INTERFACE_SYNTAX, (syntax,))
        for context, syntax in contexts
    )
    return rpc.encode_pdu(rpc.Bind(call_id, elements, alter=alter))


def request(call_id: int, context: int, syntax: TransferSyntax, stub: bytes | None = None) -> bytes:
    """A request PDU: a fresh machine's v6 request in `syntax`, or the given stub."""
    if stub is None:
        message = encode_request(windows_request(uuid.uuid4()), os.urandom(16))
        stub = ndr.wrap_request(message, syntax)
    return rpc.encode_pdu(rpc.Request(call_id, context, 0, stub))


async def answers(client: RawClient, syntax: TransferSyntax, timeout: float = 5.0) -> list[str]:
    """Every answer until the relay closes: "served", a refusal's HRESULT, or the PDU type."""
    framer, seen = PduFramer(), []
    while True:
        try:
            data = await asyncio.wait_for(client.reader.read(65536), timeout)
        except (TimeoutError, ConnectionError):
            break
        if not data:
            break
        framer.feed(data)
        while (raw := framer.next_pdu()) is not None:
            pdu = rpc.decode_pdu(raw)
            if isinstance(pdu, rpc.Response):
                try:
                    result = ndr.unwrap_response(pdu.stub, syntax)
                except ProtocolError:
                    seen.append("response")
                    continue
                served = result.hresult == 0 and result.message is not None
                seen.append("served" if served else f"0x{result.hresult:08X}")
            else:
                seen.append(type(pdu).__name__)
    await client.close()
    return seen


async def call_id_reused(port: int) -> list[str]:
    """A machine's request and, in the same write, a junk call with its call id."""
    client = await connect(port)
    client.writer.write(bind(1, ((0, rpc.NDR32), (1, rpc.NDR64))))
    client.writer.write(request(2, 1, NDR64) + request(2, 1, NDR64, JUNK_STUB))
    return await answers(client, NDR64)


async def call_id_reused_by_another_machine(port: int) -> list[str]:
    client = await connect(port)
    client.writer.write(bind(1, ((0, rpc.NDR32), (1, rpc.NDR64))))
    client.writer.write(request(2, 1, NDR64) + request(2, 1, NDR64))
    return await answers(client, NDR64)


async def context_remapped(port: int) -> list[str]:
    """Context 0 bound as NDR32, altered to NDR64, then used with an NDR32 stub."""
    client = await connect(port)
    client.writer.write(bind(1, ((0, rpc.NDR32),)))
    await asyncio.sleep(0.3)
    client.writer.write(bind(2, ((0, rpc.NDR64),), alter=True))
    await asyncio.sleep(0.3)
    client.writer.write(request(3, 0, NDR32))
    return await answers(client, NDR32)


async def calls_forgotten(port: int) -> list[str]:
    """A machine's request, then 64 junk calls: more in flight than the observer keeps."""
    client = await connect(port)
    client.writer.write(bind(1, ((0, rpc.NDR32), (1, rpc.NDR64))))
    junk = b"".join(request(100 + i, 1, NDR64, JUNK_STUB) for i in range(64))
    client.writer.write(request(2, 1, NDR64) + junk)
    return await answers(client, NDR64)


ATTACKS: dict[str, Callable[[int], Awaitable[list[str]]]] = {
    "call_id_reused": call_id_reused,
    "call_id_reused_by_another_machine": call_id_reused_by_another_machine,
    "context_remapped": context_remapped,
    "calls_forgotten": calls_forgotten,
}


async def attack(web: str, kms_port: int, name: str) -> dict[str, object]:
    login = await portal_login(web, "student1")
    assert login.status_code == 200, login.text
    tries = [await ATTACKS[name](kms_port) for _ in range(2)]
    await asyncio.sleep(0.5)
    # An honest connection afterwards: served if and only if nothing was served before.
    plain = await activate_from(kms_port, windows_request(uuid.uuid4()))
    elsewhere = await portal_login(web, "student1", source="127.0.0.3")
    return {"window": login.json()["window"]["id"], "tries": tries, "plain": plain,
            "elsewhere": elsewhere.status_code}  # fmt: skip


@pytest.mark.parametrize("name", list(ATTACKS))
def test_a_relayed_client_gets_one_machine_served_per_login(tmp_path: Path, name: str) -> None:
    add_user(tmp_path, "student1")
    with node() as upstream:
        upstream_at = f"127.0.0.1:{upstream.port}"
        with gateway_node(
            tmp_path, "--upstream", upstream_at, "--quota-week", "1", "--window", "60"
        ) as gateway:
            seen = asyncio.run(attack(gateway.web, gateway.kms_port, name))
            wait_for(
                lambda: any(e["kind"] == "activation" for e in audit(tmp_path)), what="activation"
            )
        log = gateway.output
    tries = seen["tries"]
    assert isinstance(tries, list)
    served = sum(answer == "served" for answers in tries for answer in answers)
    served += seen["plain"] == "served"
    assert served == 1, seen
    assert seen["elsewhere"] == 403, seen  # the weekly quota of 1 is spent, once
    trail = audit(tmp_path)
    activated = [e for e in trail if e["kind"] == "activation" and e["result"] == "activated"]
    assert [(e["username"], e["window_id"]) for e in activated] == [("student1", seen["window"])]
    assert "cannot account for" in log
