"""G2: --quota-week 1; each user logs in from 3 addresses at once on two nodes, one PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.adversarial.gateway_util import (
    Node,
    add_user,
    audit,
    connect,
    gateway_node,
    outcome,
    portal_login,
    windows_request,
)
from tests.support.postgres import running_postgres

pytestmark = pytest.mark.integration

USERS = ("quota-a", "quota-b", "quota-c", "quota-d")
SOURCES = 3  # addresses each user logs in from, at the same time
REQUESTS = 5  # machine ids each connection tries


def source_of(user: int, n: int) -> str:
    return f"127.0.{user + 1}.{n + 2}"


async def try_everything(user: int, nodes: list[Node]) -> list[str | int]:
    """From each of the user's addresses, on each node: one connection, 5 machine ids."""

    async def one(source: str, node: Node) -> list[str | int]:
        try:
            client = await connect(node.kms_port, source=source)
        except (OSError, TimeoutError):
            return ["closed"]
        try:
            await client.bind()
        except (ConnectionError, OSError, TimeoutError):
            await client.close()
            return ["closed"]
        results = [await outcome(client, windows_request(uuid.uuid4())) for _ in range(REQUESTS)]
        await client.close()
        return results

    runs = await asyncio.gather(
        *(one(source_of(user, n), node) for n in range(SOURCES) for node in nodes)
    )
    return [result for run in runs for result in run]


async def attack(nodes: list[Node]) -> tuple[list[list[int]], list[list[str | int]]]:
    logins = await asyncio.gather(
        *(
            portal_login(nodes[(u + n) % 2].web, name, source=source_of(u, n))
            for u, name in enumerate(USERS)
            for n in range(SOURCES)
        )
    )
    statuses = [[r.status_code for r in logins[u * SOURCES : (u + 1) * SOURCES]] for u in range(4)]
    outcomes = await asyncio.gather(*(try_everything(u, nodes) for u in range(len(USERS))))
    return statuses, list(outcomes)


def test_quota_of_one_holds_across_two_nodes(tmp_path: Path) -> None:
    with running_postgres() as pg:
        url = pg.create_database("gateway_quota")
        common = ("--db", url, "--quota-week", "1", "--window", "60")
        with gateway_node(tmp_path / "a", *common, "--node-name", "gw-a") as node_a:
            for user in USERS:
                add_user(tmp_path / "a", user, "--db", url)
            with gateway_node(tmp_path / "b", *common, "--node-name", "gw-b") as node_b:
                statuses, outcomes = asyncio.run(attack([node_a, node_b]))
        trail = audit(tmp_path / "a", "--kind", "activation", db=url)
        counted = pg.psql(
            "SELECT username, count(*) FROM windows GROUP BY username ORDER BY 1", "gateway_quota"
        )

    for user, codes, results in zip(USERS, statuses, outcomes, strict=True):
        # Exactly one login wins the quota; the others are refused while its window is open.
        assert sorted(codes) == [200, 403, 403], (user, codes)
        served = results.count("served")
        assert served == 1, (user, Counter(results))
        assert set(results) <= {"served", "closed", 0xC004F042}
    activated = Counter(e["username"] for e in trail if e["result"] == "activated")
    assert activated == dict.fromkeys(USERS, 1)
    # One window per user was ever granted.
    assert counted.split() == [f"{user}|1" for user in USERS]
    attempts = sum(len(results) for results in outcomes)
    print(
        f"\n{len(USERS) * SOURCES} concurrent logins on 2 nodes: "
        f"{sum(codes.count(200) for codes in statuses)} windows; {attempts} requests: "
        f"{sum(results.count('served') for results in outcomes)} served"
    )
