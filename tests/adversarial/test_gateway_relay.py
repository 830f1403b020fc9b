"""A3: a relayed login whose upstream host fails does not spend the window or the quota."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import pytest

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
from tests.support.account_servers import silent_listener
from tests.support.kms import RawClient
from tests.support.ports import closed_port

pytestmark = pytest.mark.integration

WINDOW = 10


def released(data_dir: Path) -> list[dict[str, object]]:
    """Wait until the node has audited a window_released (the release follows the close)."""
    wait_for(lambda: audit(data_dir, "--kind", "window_released"), what="window_released")
    return audit(data_dir, "--kind", "window_released")


async def upstream_refuses(
    web: str, kms_port: int, data_dir: Path
) -> list[httpx.Response | str | int]:
    first = await portal_login(web, "student1")
    relayed = await activate_from(kms_port, windows_request(uuid.uuid4()))
    await asyncio.to_thread(released, data_dir)
    # The window is open again: another address is still refused (quota 1 taken by it) ...
    elsewhere = await portal_login(web, "student1", source="127.0.0.2")
    # ... and the same address may log in again (which replaces it), nothing spent.
    again = await portal_login(web, "student1")
    return [first, relayed, elsewhere, again]


def test_upstream_down_leaves_the_window_open_and_the_quota_unspent(tmp_path: Path) -> None:
    add_user(tmp_path, "student1")
    upstream = f"127.0.0.1:{closed_port()}"
    with gateway_node(
        tmp_path, "--upstream", upstream, "--quota-week", "1", "--window", "60"
    ) as node:
        first, relayed, elsewhere, again = asyncio.run(
            upstream_refuses(node.web, node.kms_port, tmp_path)
        )
    assert isinstance(first, httpx.Response) and first.status_code == 200
    assert relayed == "closed"
    assert isinstance(elsewhere, httpx.Response) and elsewhere.status_code == 403
    assert "still open" in elsewhere.json()["detail"]
    assert isinstance(again, httpx.Response) and again.status_code == 200, again.text
    assert again.json()["quota"]["week"]["used"] == 0

    trail = audit(tmp_path, "--user", "student1")
    window = first.json()["window"]["id"]
    kinds = [(e["kind"], e["window_id"]) for e in trail if e["window_id"] == window]
    assert kinds == [("window_granted", window), ("window_consumed", window),
                     ("window_released", window)]  # fmt: skip
    [released] = [e for e in trail if e["kind"] == "window_released"]
    assert released["detail"].startswith(f"upstream {upstream} unreachable: Connection refused")
    assert "; open again until " in released["detail"]
    assert not any(e["kind"] == "activation" for e in trail)


async def upstream_hangs(
    web: str, kms_port: int, data_dir: Path
) -> tuple[int, bytes, httpx.Response]:
    login = await portal_login(web, "student1")
    expires = datetime.fromisoformat(login.json()["window"]["expires_at"]).timestamp()
    client: RawClient = await connect(kms_port)
    client.writer.write(client.bind_pdu())
    # The upstream never answers; the relay hangs up at the window's end.
    ended = await asyncio.wait_for(client.reader.read(), WINDOW + 10)
    await client.close()
    await asyncio.to_thread(released, data_dir)
    await asyncio.sleep(max(0.0, expires - time.time()))
    later = await portal_login(web, "student1", source="127.0.0.2")
    return login.status_code, ended, later


def test_upstream_silent_until_the_window_ends_gives_the_quota_back(tmp_path: Path) -> None:
    add_user(tmp_path, "student1")
    with silent_listener() as port, gateway_node(
        tmp_path, "--upstream", f"127.0.0.1:{port}", "--quota-week", "1",
        "--window", str(WINDOW), "--idle-timeout", "120",
    ) as node:  # fmt: skip
        status, ended, later = asyncio.run(upstream_hangs(node.web, node.kms_port, tmp_path))
    assert status == 200 and ended == b""
    # The window ended unused: quota 1 is free again for a login from anywhere.
    assert later.status_code == 200, later.text
    assert later.json()["quota"]["week"]["used"] == 0
    assert later.json()["quota"]["open_windows"] == 0
    [released] = [e for e in audit(tmp_path) if e["kind"] == "window_released"]
    assert released["detail"] == (
        "the connection closed without a served activation; "
        "window ended unused: the quota is given back"
    )
    assert "relay closed: its activation window has ended" in node.output
