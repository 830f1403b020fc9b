"""G1: one login, one connection, one machine, and nothing after the window's end."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from tests.adversarial.gateway_util import (
    add_user,
    audit,
    connect,
    gateway_node,
    office_request,
    outcome,
    portal_login,
    windows_request,
)

pytestmark = pytest.mark.integration

REFUSED = 0xC004F042
WINDOW = 10  # the shortest --window


async def attack(web: str, kms_port: int) -> dict[str, object]:
    login = await portal_login(web, "student1")
    assert login.status_code == 200, login.text
    expires = datetime.fromisoformat(login.json()["window"]["expires_at"]).timestamp()
    machines = [uuid.uuid4() for _ in range(5)]
    client = await connect(kms_port)
    await client.bind()
    # Five machines on the one connection the window admitted.
    five = [await outcome(client, windows_request(cmid)) for cmid in machines]
    # The first machine's other products (Office 2016 apps: another KMS id) are served.
    office = [
        await outcome(client, office_request(machines[0], product))
        for product in ("Office Excel 2016", "Office Outlook 2016")
    ]
    # Keep the connection alive past the window's end, then try again 1 s later.
    await asyncio.sleep(max(0.0, expires + 1 - time.time()))
    hung_up = await asyncio.wait_for(client.reader.read(1), 5) == b""
    late = await outcome(client, windows_request(machines[0]))
    await client.close()
    fresh = await connect(kms_port)
    after = await outcome(fresh, windows_request(machines[0]))
    await fresh.close()
    return {
        "machines": machines, "five": five, "office": office, "hung_up": hung_up,
        "late": late, "after": after, "window": login.json()["window"]["id"],
    }  # fmt: skip


def test_a_window_serves_one_machine_and_nothing_after_its_end(tmp_path: Path) -> None:
    add_user(tmp_path, "student1")
    with gateway_node(tmp_path, "--window", str(WINDOW), "--quota-week", "5") as node:
        seen = asyncio.run(attack(node.web, node.kms_port))
    log = node.output

    machines = seen["machines"]
    assert isinstance(machines, list)
    assert seen["five"] == ["served", REFUSED, REFUSED, REFUSED, REFUSED]
    assert seen["office"] == ["served", "served"]
    assert seen["hung_up"], "the host kept the connection open after the window's end"
    assert seen["late"] == "closed" and seen["after"] == "closed"
    assert "closed: its activation window has ended" in log

    trail = audit(tmp_path, "--user", "student1")
    activations = [e for e in trail if e["kind"] == "activation"]
    served = [e for e in activations if e["result"] == "activated"]
    refused = [e for e in activations if e["result"] == "refused"]
    assert [e["cmid"] for e in served] == [str(machines[0])] * 3
    assert [e["product"] for e in served[1:]] == ["Office Excel 2016", "Office Outlook 2016"]
    assert [e["cmid"] for e in refused] == [str(m) for m in machines[1:]]
    assert all(
        e["detail"] == f"0xC004F042: the window serves client machine {machines[0]} only"
        for e in refused
    )
    assert {e["window_id"] for e in activations} == {seen["window"]}
    assert [e["kind"] for e in trail].count("window_consumed") == 1
    assert "window_released" not in [e["kind"] for e in trail]  # it was spent
