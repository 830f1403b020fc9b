"""G10: a flood of strangers' portal logins, and a user the portal knows logging in meanwhile.

The portal ran at most 8 account checks at once and queued every other login, however many:
a flood of wrong passwords from many addresses put a known user's login behind all of them.
The promise: past 24 logins in progress a stranger's login is answered 503 (Retry-After) at
once, and the last 4 places are kept for logins the portal can tell from a stranger's (an
address the user logged in from, the device cookie). Such a login also takes the first free
turn of the 8 account checks, ahead of every stranger already waiting: it waits for the checks
running when it came, not for the queue or the flood.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import httpx
import pytest

from kmsgate.web.portal_login import MAX_CONCURRENT_LOGINS
from tests.adversarial.gateway_util import add_user, gateway_node, portal_login

pytestmark = [pytest.mark.timeout(600), pytest.mark.integration]

SOURCES = 60  # flood addresses, each under the per-address limit of 5 failures
PER_SOURCE = 5
KNOWN = "127.0.0.9"
LATECOMERS = 10  # strangers arriving once every place is taken


async def flood_and_log_in(
    web: str,
) -> tuple[list[int], httpx.Response, int, list[str], list[bool]]:
    """The flood's statuses in the order they came back, the known user's answer, how many
    of the flood's checks completed while it waited, the flood's Retry-After values, and
    which of its 503s came before the body was read."""
    done: list[int] = []
    retry_after: list[str] = []
    at_door: list[bool] = []

    async def stranger(client: httpx.AsyncClient) -> None:
        name = f"nobody-{secrets.token_hex(4)}"
        response = await client.post("/api/login", json={"username": name, "password": "x" * 12})
        done.append(response.status_code)
        if response.status_code == 503:
            retry_after.append(response.headers.get("retry-after", ""))

    async def latecomer(client: httpx.AsyncClient) -> None:
        name = f"late-{secrets.token_hex(4)}"
        response = await client.post("/api/login", json={"username": name, "password": "x" * 12})
        # While the places are taken: refused at the door, before the body was read (plain
        # text, not the API's JSON), so a retrying flood costs the KMS host's loop little.
        at_door.append(
            response.status_code == 503 and response.headers["content-type"].startswith("text/")
        )

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
        late = [asyncio.create_task(latecomer(client)) for client in clients[:LATECOMERS]]
        # How long she waits depends on how fast argon2 runs on a busy machine; the promise is
        # how many of the flood's checks she waits for, counted below.
        answer = await portal_login(web, "alice", source=KNOWN, timeout=240)
        checked_meanwhile = done.count(401) - checked_before
        await asyncio.gather(*late, *flood)
    finally:
        for client in clients:
            await client.aclose()
    return done, answer, checked_meanwhile, retry_after, at_door


def test_a_known_user_is_not_queued_behind_a_flood_of_strangers(tmp_path: Path) -> None:
    data = tmp_path / "node"
    add_user(data, "alice")
    with gateway_node(data) as node:
        first = asyncio.run(portal_login(node.web, "alice", source=KNOWN))
        assert first.status_code == 200, first.text  # her address is known from now on
        statuses, answer, checked_meanwhile, retry_after, at_door = asyncio.run(
            flood_and_log_in(node.web)
        )
        log = node.output
    assert answer.status_code == 200, answer.text
    # Waited for the checks running when she came at most, not for the queue behind them.
    assert checked_meanwhile <= MAX_CONCURRENT_LOGINS, checked_meanwhile
    assert len(statuses) == SOURCES * PER_SOURCE
    assert set(statuses) <= {401, 503}, sorted(set(statuses))
    assert statuses.count(503) >= SOURCES * PER_SOURCE // 2
    assert set(retry_after) == {"5"}
    assert at_door == [True] * LATECOMERS
    assert "portal logins refused, too many in progress" in log


def test_an_account_holder_cannot_fill_the_places_kept_for_known_users(tmp_path: Path) -> None:
    # Mallory's own logins come from her own known addresses, with her right password: each
    # is trusted and would succeed. At most 2 of them are in progress at once, so the
    # places kept for known users stay open to others.
    data = tmp_path / "node"
    add_user(data, "alice")
    add_user(data, "mallory")
    sources = [f"127.0.3.{i}" for i in range(1, 9)]

    async def run(web: str) -> tuple[list[int], list[int]]:
        for source in sources:
            assert (await portal_login(web, "mallory", source=source)).status_code == 200
        flood = [
            asyncio.create_task(portal_login(web, "mallory", source=source))
            for source in sources
            for _ in range(3)
        ]
        await asyncio.sleep(0.3)
        alice = [(await portal_login(web, "alice", source=KNOWN)).status_code for _ in range(3)]
        return alice, [response.status_code for response in await asyncio.gather(*flood)]

    with gateway_node(data) as node:
        assert asyncio.run(portal_login(node.web, "alice", source=KNOWN)).status_code == 200
        alice, mallory = asyncio.run(run(node.web))
    assert alice == [200, 200, 200]
    assert mallory.count(503) >= len(mallory) - 2 * len(sources), mallory
