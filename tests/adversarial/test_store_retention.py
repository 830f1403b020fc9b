"""S4 (retention): a node keeps what an admin needs and deletes what is older, by itself.

Seeded rows 500 days old (activations, refusals, audit rows of a refused-connection flood,
their clients) and recent ones; `kmsgate serve` prunes at start, from its writer process.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kmsgate.store.audit import AuditEvent
from kmsgate.store.database import Store
from kmsgate.store.gateway import GatewayStore
from tests.support.records import make_record
from tests.support.store_node import activate_named, node, wait_until

pytestmark = [pytest.mark.timeout(180), pytest.mark.integration]
NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=500)
RECENT = NOW - timedelta(days=300)


def seed(db: Path) -> None:
    async def fill() -> None:
        store = await Store.open(f"sqlite:///{db}")
        try:
            await store.record_activations(
                [make_record(time=OLD + timedelta(seconds=i), machine_name=f"OLD-{i}",
                             result="refused" if i % 2 else "activated") for i in range(3000)]
                + [make_record(time=RECENT + timedelta(seconds=i), machine_name=f"KEEP-{i}")
                   for i in range(50)]
            )  # fmt: skip
            await GatewayStore(store).add_audit(
                [AuditEvent(time=OLD, kind="connection_refused", node="n",
                            address=f"10.0.{i // 250}.{i % 250}", detail="no window")
                 for i in range(5000)]
                + [AuditEvent(time=RECENT, kind="login_ok", node="n", username="u", detail="")]
            )  # fmt: skip
        finally:
            await store.close()

    asyncio.run(fill())


def rows(db: Path, sql: str) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        return int(conn.execute(sql).fetchone()[0])


def test_serve_prunes_older_rows_at_start_by_default() -> None:
    with node(seed=seed) as server:
        wait_until(
            lambda: rows(server.db, "SELECT count(*) FROM activations") == 50,
            60,
            "activations older than 400 days deleted",
        )
        wait_until(
            lambda: rows(server.db, "SELECT count(*) FROM audit_events") == 1,
            60,
            "audit rows older than 400 days deleted",
        )
        wait_until(lambda: rows(server.db, "SELECT count(*) FROM clients") == 50, 60, "clients")
        assert rows(server.db, "SELECT count(*) FROM activations WHERE machine_name "
                               "LIKE 'KEEP-%'") == 50  # fmt: skip
        assert server.health()[0] == 200
    assert "retention (400 days): deleted 3000 activations and refusals, 5000 audit rows, " \
        "3000 clients, 0 windows" in server.log()  # fmt: skip


def test_retention_days_zero_keeps_everything() -> None:
    with node("--retention-days", "0", seed=seed) as server:
        # Records written prove the writer at work: with retention it prunes first.
        served = asyncio.run(activate_named(server.port, [f"NEW-{i}" for i in range(5)]))
        assert len(served) == 5
        wait_until(lambda: server.store_figures()["written"] == 5, 30, "new records written")
        assert rows(server.db, "SELECT count(*) FROM activations") == 3055
        assert rows(server.db, "SELECT count(*) FROM audit_events") == 5001
    assert "retention (" not in server.log()
