"""G10: a flood of strangers' portal logins, and a user the portal knows logging in meanwhile.

The portal ran at most 8 account checks at once and queued every other login, however many:
a flood of wrong passwords from many addresses put a known user's login behind all of them.
The promise: past 24 logins in progress a stranger's login is answered 503 (Retry-After) at
once, and the last 4 places are kept for logins the portal can tell from a stranger's (an
address the user logged in from, the device cookie), so such a login waits for at most those
in progress, not for the flood.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import httpx
import pytest

from kmsgate.web.portal_login import MAX_PENDING_LOGINS
from tests.adversarial.gateway_util import add_user, gateway_node, portal_login

pytestmark = [pytest.mark.timeout(300), pytest.mark.integration]

SOURCES = 60  # flood addresses, each under the per-address limit of 5 failures
PER_SOURCE = 5
KNOWN = "127.0.0.9"


async def flood_and_log_in(web: str) -> tuple[list[int], httpx.Response, int, list[str]]:
    """The flood's statuses in the order they came back, the known user's answer, how many
    of the flood's checks completed while it waited, and the flood's Retry-After values."""
    done: list[int] = []
    retry_after: list[str] = []

    async def stranger(client: httpx.AsyncClient) -> None:
        name = f"nobody-{secrets.token_hex(4)}"
        response = await client.post("/api/login", json={"username": name, "password": "x" * 12})
        done.append(response.status_code)
        if response.status_code == 503:
            retry_after.append(response.headers.get("retry-after", ""))

    clients = [
        httpx.AsyncClient(
            base_url=web,
            transport=httpx.AsyncHTTPTransport(local_address=f"127.0.1.{i}"),
            timeout=120,
        )
        for i in range(1, SOURCES + 1)
    ]
    try:
        flood = [
            asyncio.create_task(stranger(client)) for client in clients for _ in range(PER_SOURCE)
        ]
        await asyncio.sleep(1.0)  # every flood request sent and waiting
        checked_before = done.count(401)
        answer = await portal_login(web, "alice", source=KNOWN)
        checked_meanwhile = done.count(401) - checked_before
        await asyncio.gather(*flood)
    finally:
        for client in clients:
            await client.aclose()
    return done, answer, checked_meanwhile, retry_after


def test_a_known_user_is_not_queued_behind_a_flood_of_strangers(tmp_path: Path) -> None:
    data = tmp_path / "node"
    add_user(data, "alice")
    with gateway_node(data) as node:
        first = asyncio.run(portal_login(node.web, "alice", source=KNOWN))
        assert first.status_code == 200, first.text  # her address is known from now on
        statuses, answer, checked_meanwhile, retry_after = asyncio.run(flood_and_log_in(node.web))
        log = node.output
    assert answer.status_code == 200, answer.text
    # Waited for the logins already in progress at most, not for the whole flood.
    assert checked_meanwhile <= MAX_PENDING_LOGINS, checked_meanwhile
    assert len(statuses) == SOURCES * PER_SOURCE
    assert set(statuses) <= {401, 503}, sorted(set(statuses))
    assert statuses.count(503) >= SOURCES * PER_SOURCE // 2
    assert set(retry_after) == {"5"}
    assert "portal logins refused, too many in progress" in log
