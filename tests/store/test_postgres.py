"""Several kmsgate nodes on one PostgreSQL: concurrent writers neither deadlock nor lose counts."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from kmsgate.store.database import Store
from kmsgate.store.records import ActivationRecord
from kmsgate.store.schema import activation_hours, activations, clients, product_counts
from tests.store.conftest import empty_tables
from tests.support.postgres import PostgresServer
from tests.support.records import T0, make_record

pytestmark = pytest.mark.integration

NODES = 2
TASKS_PER_NODE = 3  # each node flushes from several tasks at once, like a busy host
BATCHES_PER_TASK = 6
BATCH = 60
CMIDS = 40  # few CMIDs: every batch overlaps every other one


def batches(seed: int, node: str) -> list[list[ActivationRecord]]:
    rng = random.Random(seed)
    pool = [uuid.UUID(int=n * 0x9E3779B97F4A7C15 % 2**128) for n in range(1, CMIDS + 1)]
    return [
        [
            make_record(
                client_machine_id=rng.choice(pool) if rng.random() > 0.05 else None,
                time=T0 + timedelta(seconds=rng.randrange(7 * 24 * 3600)),
                node=node,
                result="activated" if rng.random() > 0.1 else "refused",
                product_family=rng.choice(["Windows", "Office 2021", "Windows Server"]),
            )
            for _ in range(BATCH)
        ]
        for _ in range(BATCHES_PER_TASK)
    ]


async def test_two_nodes_write_overlapping_clients_concurrently(
    pg_server: PostgresServer, pg_database: str
) -> None:
    # The session's database holds whatever earlier tests wrote: the totals below are exact.
    empty_tables(pg_server, make_url(pg_database).database or "")
    stores = [await Store.open(pg_database) for _ in range(NODES)]
    work = [
        (stores[n], batches(seed=n * 100 + t, node=f"node-{n}"))
        for n in range(NODES)
        for t in range(TASKS_PER_NODE)
    ]

    async def flush_all(store: Store, todo: list[list[ActivationRecord]]) -> None:
        for batch in todo:
            await store.record_activations(batch)  # a deadlock would raise StoreUnavailable

    try:
        await asyncio.gather(*(flush_all(store, todo) for store, todo in work))
        records = [r for _, todo in work for batch in todo for r in batch]
        per_cmid = Counter(r.client_machine_id for r in records if r.client_machine_id)

        stats = await stores[1].stats(T0 + timedelta(days=7))
        async with stores[0].engine.connect() as conn:
            rows = (await conn.execute(select(func.count()).select_from(activations))).scalar()
            client_rows = (await conn.execute(select(func.count()).select_from(clients))).scalar()
            hours = (await conn.execute(select(func.sum(activation_hours.c.count)))).scalar()
            products = (await conn.execute(select(func.sum(product_counts.c.count)))).scalar()
        assert rows == stats.activations == len(records)
        assert client_rows == stats.clients == len(per_cmid)
        assert hours == products == len(records)
        assert stats.refusals == sum(r.result == "refused" for r in records)
        assert sum(count for _, count in stats.per_product) == len(records)

        for cmid, count in per_cmid.items():
            client = await stores[0].get_client(cmid)
            mine = [r.time for r in records if r.client_machine_id == cmid]
            assert client is not None
            assert client.request_count == count
            assert (client.first_seen, client.last_seen) == (min(mine), max(mine))
    finally:
        for store in stores:
            await store.close()
