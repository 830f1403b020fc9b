"""Alembic migrations on empty SQLite and PostgreSQL databases: idempotent, concurrent, exact."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, Table, insert, inspect
from sqlalchemy.engine import Connection

from kmsgate.store import migrate
from kmsgate.store.database import Store
from kmsgate.store.engine import make_engine
from kmsgate.store.errors import StoreError
from kmsgate.store.schema import metadata
from kmsgate.store.schema_version import HEAD_REVISION
from kmsgate.store.search import FTS_TABLE
from tests.support.records import make_record

pytestmark = pytest.mark.integration


def revision_of(url: str) -> str | None:
    async def read() -> str | None:
        engine = make_engine(url)
        try:
            return await migrate.current_revision(engine)
        finally:
            await engine.dispose()

    return asyncio.run(read())


def _is_fts_table(name: str) -> bool:
    return name == FTS_TABLE or name.startswith(f"{FTS_TABLE}_")


def schema_diff(url: str) -> list[Any]:
    """Differences between the migrated database and schema.py, as autogenerate sees them."""

    def include(obj: Any, name: str | None, kind: str, reflected: bool, other: Any) -> bool:
        # Search indexes are migration-only: PostgreSQL's trigram indexes (they need pg_trgm)
        # and SQLite's FTS5 table with its shadow tables (_data, _idx, _config, ...).
        if kind == "index" and reflected and (name or "").endswith("_trgm"):
            return False
        return not (kind == "table" and reflected and _is_fts_table(name or ""))

    def compare(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_object": include}
        )
        return list(compare_metadata(context, metadata))

    async def run() -> list[Any]:
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(compare)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_upgrade_from_empty_twice(empty_db_url: str) -> None:
    assert revision_of(empty_db_url) is None
    migrate.upgrade(empty_db_url)
    assert revision_of(empty_db_url) == migrate.head()
    migrate.upgrade(empty_db_url)  # nothing to do the second time
    assert revision_of(empty_db_url) == migrate.head()


def test_migrated_schema_matches_schema_py(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url)
    assert schema_diff(empty_db_url) == []


def test_downgrade_to_base_and_up_again(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url)
    migrate.downgrade(empty_db_url, "base")
    assert revision_of(empty_db_url) is None
    migrate.upgrade(empty_db_url)
    assert revision_of(empty_db_url) == migrate.head()
    assert schema_diff(empty_db_url) == []


async def test_store_open_upgrades_and_is_idempotent(empty_db_url: str) -> None:
    for _ in range(2):
        store = await Store.open(empty_db_url)
        try:
            await store.record_activations([make_record()])
        finally:
            await store.close()
    store = await Store.open(empty_db_url, upgrade=False)
    try:
        assert (await store.list_activations()).total == 2
        assert await migrate.current_revision(store.engine) == migrate.head()
    finally:
        await store.close()


async def test_nodes_starting_together_upgrade_once(empty_db_url: str) -> None:
    # Without the advisory lock (PostgreSQL) or BEGIN IMMEDIATE (SQLite) the losers would
    # fail on "relation already exists" or a duplicate alembic_version row.
    stores = await asyncio.gather(*(Store.open(empty_db_url) for _ in range(4)))
    try:
        assert {await migrate.current_revision(s.engine) for s in stores} == {migrate.head()}
    finally:
        for store in stores:
            await store.close()


async def test_a_newer_schema_is_reported(empty_db_url: str) -> None:
    store = await Store.open(empty_db_url)
    try:
        # Stamp a revision this code does not know, as a newer kmsgate would leave it.
        async with store.engine.begin() as conn:
            version = await conn.run_sync(
                lambda sync: Table("alembic_version", MetaData(), autoload_with=sync)
            )
            await conn.execute(version.delete())
            await conn.execute(insert(version).values(version_num="9999_future"))
    finally:
        await store.close()
    with pytest.raises(StoreError, match="9999_future"):
        await Store.open(empty_db_url)


_UPGRADE_SCRIPT = (
    "import sys, time\n"
    "from kmsgate.store import migrate\n"
    "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"  # start together
    "migrate.upgrade(sys.argv[1])\n"
)


def test_processes_upgrading_at_once(empty_db_url: str) -> None:
    # Separate processes are separate nodes: only the database can serialise them.
    start_at = time.time() + 1.5
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _UPGRADE_SCRIPT, empty_db_url, str(start_at)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outcomes = [(p.wait(60), p.stderr.read() if p.stderr else "") for p in processes]
    assert [code for code, _ in outcomes] == [0, 0, 0], outcomes
    assert revision_of(empty_db_url) == migrate.head()
    assert schema_diff(empty_db_url) == []


def test_postgres_gets_trigram_search_indexes(pg_database: str) -> None:
    async def index_names() -> set[str]:
        engine = make_engine(pg_database)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: {i["name"] or "" for i in inspect(sync).get_indexes("clients")}
                )
        finally:
            await engine.dispose()

    names = asyncio.run(index_names())
    assert {f"ix_clients_{c}_trgm" for c in ("machine_name", "sku_name", "last_address")} <= names


def test_migrations_ship_inside_the_package() -> None:
    location = Path(migrate.alembic_config().get_main_option("script_location") or "")
    assert location.is_absolute()
    assert (location / "env.py").is_file()
    assert (location / "versions" / "0001_initial.py").is_file()
    assert "kmsgate" in location.parts and "store" in location.parts
    assert migrate.head() == "0012"
    assert migrate.head() == HEAD_REVISION  # the fast check at Store.open reads this


_OPEN_AND_REPORT = """
import asyncio, sys
from kmsgate.store.database import Store

async def main():
    store = await Store.open(sys.argv[1])
    loaded = "alembic" in sys.modules
    await store.close()
    from kmsgate.store import migrate
    print(loaded, migrate.head())

asyncio.run(main())
"""


def test_a_database_at_head_opens_without_alembic_and_an_older_one_is_upgraded(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/kms.db"

    def open_in_a_fresh_process() -> str:
        done = subprocess.run([sys.executable, "-c", _OPEN_AND_REPORT, url],
                              capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        return done.stdout.strip()

    migrate.upgrade(url, "0009")
    assert open_in_a_fresh_process() == f"True {HEAD_REVISION}"  # migrated: Alembic ran
    assert revision_of(url) == HEAD_REVISION
    assert open_in_a_fresh_process() == f"False {HEAD_REVISION}"  # at head: never imported


def test_the_refused_connections_counter_is_filled_from_the_audit_trail(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/kms.db"
    migrate.upgrade(url, "0009")
    with sqlite3.connect(tmp_path / "kms.db") as conn:
        conn.executemany(
            "INSERT INTO audit_events (time, kind, node, detail, count) VALUES (?, ?, 'n', '', ?)",
            [("2026-11-01 10:00:00", "connection_refused", 40),
             ("2026-11-01 10:01:00", "connection_refused", 2),
             ("2026-11-01 10:02:00", "login_failed", 1)],
        )  # fmt: skip
    migrate.upgrade(url)
    with sqlite3.connect(tmp_path / "kms.db") as conn:
        rows = conn.execute(
            "SELECT value FROM counters WHERE name = 'gateway:refused_connections'"
        ).fetchall()
    assert rows == [(42,)]
