"""--count-mode seen through real nodes: grows per machine, capped, survives restarts, shared."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kmsgate.config.settings import ServeSettings
from kmsgate.node import Node
from kmsgate.protocol.messages import KmsRequest
from kmsgate.store.database import Store
from kmsgate.store.seen import SeenMachines
from tests.support.kms import RawClient, make_request
from tests.support.postgres import PostgresServer, running_postgres

pytestmark = pytest.mark.integration

OFFICE_APP = uuid.UUID("0ff1ce15-a989-479d-af46-f275c6370663")
OFFICE_2019_KMS = uuid.UUID("617d9eb1-ef36-4f82-86e0-a65ae07b96c6")
OFFICE_2019_PRO_PLUS = uuid.UUID("85dd8b5f-eaa4-4af3-a628-cce9e77c9a03")


def node(db: str | None, tmp_path: Path, name: str = "node-a", **overrides: object) -> Node:
    settings: dict[str, object] = {
        "listen": ["127.0.0.1:0"],
        "data_dir": tmp_path / name,
        "node_name": name,
        "no_web": True,
        "count_mode": "seen",
    }
    if db is None:
        settings["no_store"] = True
    else:
        settings["db"] = db
    settings.update(overrides)
    return Node(ServeSettings(**settings))  # type: ignore[arg-type]


async def counts(port: int, requests: list[KmsRequest]) -> list[int]:
    """The client count each request got, over one connection."""
    client = await RawClient.connect(port)
    try:
        await client.bind()
        return [(await client.activate(6, r)).response.current_client_count for r in requests]
    finally:
        await client.close()


def machines(n: int, required: int = 5) -> list[KmsRequest]:
    base = make_request(6)
    return [
        dataclasses.replace(base, client_machine_id=uuid.uuid4(), required_client_count=required)
        for _ in range(n)
    ]


def office(cmid: uuid.UUID | None = None) -> KmsRequest:
    return dataclasses.replace(
        make_request(6),
        application_id=OFFICE_APP,
        kms_counted_id=OFFICE_2019_KMS,
        sku_id=OFFICE_2019_PRO_PLUS,
        client_machine_id=cmid or uuid.uuid4(),
        required_client_count=5,
    )


async def test_count_grows_per_machine_and_is_capped_without_a_store(tmp_path: Path) -> None:
    async with node(None, tmp_path) as service:
        assert service.host is not None
        port = service.host.port
        got = await counts(port, machines(12))
        assert got == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10]
        # A known machine asking again does not grow it; Office counts on its own.
        again = dataclasses.replace(machines(1)[0], required_client_count=25)
        assert await counts(port, [again, again]) == [13, 13]
        assert await counts(port, [office(), office()]) == [1, 2]


async def test_a_client_charging_the_count_succeeds(tmp_path: Path) -> None:
    # A charging client sends requests with new machine ids until the count reaches what
    # its product needs (25 for a Windows client), and gives up when the count stalls.
    async with node(None, tmp_path) as service:
        assert service.host is not None
        client = await RawClient.connect(service.host.port)
        seen: list[int] = []
        try:
            await client.bind()
            while not seen or seen[-1] < 25:
                answer = await client.activate(6, machines(1, required=25)[0])
                count = answer.response.current_client_count
                assert not seen or count > seen[-1], f"the count stalled at {count}"
                seen.append(count)
        finally:
            await client.close()
        assert seen == list(range(1, 26))


async def test_count_survives_a_restart(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/kmsgate.db"
    async with node(db, tmp_path) as service:
        assert service.host is not None
        assert await counts(service.host.port, [*machines(3), office()]) == [1, 2, 3, 1]
    async with node(db, tmp_path) as service:
        assert service.host is not None
        assert await counts(service.host.port, [*machines(1), office()]) == [4, 2]


async def test_machines_older_than_30_days_are_not_counted_after_a_restart(
    tmp_path: Path,
) -> None:
    db = f"sqlite:///{tmp_path}/kmsgate.db"
    store = await Store.open(db)
    try:
        now = datetime.now(UTC)
        await SeenMachines(store).save(
            [("windows", uuid.uuid4(), now - timedelta(days=31)) for _ in range(4)]
            + [("windows", uuid.uuid4(), now - timedelta(days=29)) for _ in range(2)]
        )
    finally:
        await store.close()
    async with node(db, tmp_path) as service:
        assert service.host is not None
        assert await counts(service.host.port, machines(1)) == [3]


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


async def test_two_nodes_on_one_postgresql_see_one_count(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.create_database(f"seen_{uuid.uuid4().hex[:8]}")
    async with node(url, tmp_path, "node-a") as a, node(url, tmp_path, "node-b") as b:
        assert a.host is not None and b.host is not None
        assert await counts(a.host.port, machines(3)) == [1, 2, 3]
        # Node B learns node A's machines within a few sync rounds; its own is the fourth.
        probe = machines(1)[0]
        deadline = time.monotonic() + 20
        got = await counts(b.host.port, [probe])
        while got != [4] and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            got = await counts(b.host.port, [probe])
        assert got == [4]
        # And node A learns node B's machine: a fifth machine on A makes five.
        fifth = machines(1)[0]
        deadline = time.monotonic() + 20
        got = await counts(a.host.port, [fifth])
        while got != [5] and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            got = await counts(a.host.port, [fifth])
        assert got == [5]
