"""The SQLite file under a Store: deleted, replaced or missing, and never created by accident."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from kmsgate.store import migrate
from kmsgate.store.database import Store
from kmsgate.store.engine import (
    SQLITE_CACHE_KIB,
    SQLITE_POOL_OVERFLOW,
    SQLITE_POOL_SIZE,
    SQLITE_WRITER_CACHE_KIB,
    WRITE_OPTION,
    create_sqlite_file,
    make_engine,
)
from kmsgate.store.errors import StoreUnavailable
from kmsgate.store.sqlite_file import FILE_CHECK_INTERVAL
from tests.support.records import make_record


def names(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return {row[0] for row in conn.execute("SELECT machine_name FROM activations")}


def remove_all(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + suffix).unlink()


async def kept_then_lost(store: Store, db: Path, backup: Path) -> None:
    """Record KEPT, back the file up into `backup`, then record LOST (in the live file only)."""
    await store.record_activations([make_record(machine_name="KEPT")])
    with (
        contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as live,
        contextlib.closing(sqlite3.connect(backup)) as copy,
    ):
        live.backup(copy)
    await store.record_activations([make_record(machine_name="LOST")])


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "kmsgate.db"


async def test_a_deleted_file_is_recreated_at_the_next_write(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await Store.open(f"sqlite:///{db}")
    try:
        await store.record_activations([make_record(machine_name="FIRST")])
        remove_all(db)
        with caplog.at_level(logging.WARNING, logger="kmsgate.store"):
            await store.record_activations([make_record(machine_name="SECOND")])
        assert names(db) == {"SECOND"}
        assert store.recreated == 1
        assert f"database file {db} was deleted while in use" in caplog.text
        assert f"database file {db} created anew with an empty schema" in caplog.text
        assert (await store.stats(make_record().time)).activations == 1
    finally:
        await store.close()


async def test_a_batch_committed_into_a_file_deleted_meanwhile_is_written_again(
    db: Path,
) -> None:
    store = await Store.open(f"sqlite:///{db}")
    deleted = []

    def delete_at_commit(_conn: Any) -> None:
        # Deleted while the batch commits: it lands in the lost file, then in the new one.
        if not deleted:
            deleted.append(True)
            remove_all(db)

    try:
        await store.record_activations([make_record(machine_name="BEFORE")])
        event.listen(store.engine.sync_engine, "commit", delete_at_commit)
        await store.record_activations([make_record(machine_name="DURING")])
        assert deleted and names(db) == {"DURING"}
    finally:
        await store.close()


async def test_a_replaced_file_is_reopened_without_the_old_sidecars(
    db: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await Store.open(f"sqlite:///{db}")
    backup = tmp_path / "data" / "backup.db"
    try:
        await kept_then_lost(store, db, backup)
        assert db.with_name("kmsgate.db-wal").stat().st_size > 0  # LOST is in this log
        backup.replace(db)
        with caplog.at_level(logging.WARNING, logger="kmsgate.store"):
            await store.record_activations([make_record(machine_name="AFTER")])
        assert names(db) == {"KEPT", "AFTER"}
        assert f"database file {db} was replaced while in use" in caplog.text
        with contextlib.closing(sqlite3.connect(db)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        await store.close()


async def test_a_connection_opened_after_a_replacement_never_reads_the_lost_log(
    db: Path, tmp_path: Path
) -> None:
    # Within the once-a-second check the pool may open a connection to the new file, whose
    # path still names the lost file's -wal: reading through it shows (and on close would
    # copy into the new file) records of another file.
    clock = [0.0]
    store = await Store.open(f"sqlite:///{db}", clock=lambda: clock[0])
    backup = tmp_path / "data" / "backup.db"
    try:
        await kept_then_lost(store, db, backup)
        backup.replace(db)
        pooled = await store.engine.connect()  # the pooled connection to the lost file
        try:
            seen = [r.machine_name for r in (await store.list_activations()).items]
        finally:
            await pooled.close()
        assert "LOST" not in seen
        await store.record_activations([make_record(machine_name="AFTER")])
        await store.close()
        assert names(db) == {"KEPT", "AFTER"}
        with contextlib.closing(sqlite3.connect(db)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        await store.close()


def crash_copy(db: Path, into: Path) -> set[str]:
    """The names a crash now would leave: the file and the log at its path, as they are."""
    into.mkdir()
    for suffix in ("", "-wal"):
        with contextlib.suppress(FileNotFoundError):
            shutil.copyfile(db.with_name(db.name + suffix), into / f"kmsgate.db{suffix}")
    return names(into / "kmsgate.db")


@pytest.mark.parametrize("lost", [("-wal",), ("-shm",), ("-wal", "-shm")])
async def test_a_deleted_log_is_written_into_the_file_and_replaced(
    db: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, lost: tuple[str, ...]
) -> None:
    clock = [0.0]
    store = await Store.open(f"sqlite:///{db}", clock=lambda: clock[0])
    try:
        await store.record_activations([make_record(machine_name=n) for n in ("A", "B")])
        for suffix in lost:  # the commits since the last checkpoint live only there
            db.with_name(db.name + suffix).unlink()
        await store.record_activations([make_record(machine_name="C")])  # before the check
        # Within the once-a-second check, two reads at once: the second one's new connection
        # is refused, not paired with another log; the store reopens and both read on.
        with caplog.at_level(logging.WARNING, logger="kmsgate.store"):
            pages = await asyncio.gather(store.list_activations(), store.list_activations())
        assert [{r.machine_name for r in page.items} for page in pages] == [{"A", "B", "C"}] * 2
        assert f"the log of database file {db} (its -wal or -shm) was deleted" in caplog.text
        clock[0] += FILE_CHECK_INTERVAL
        await store.record_activations([make_record(machine_name="D")])
        # A crash now (the process gone, the files as they are) keeps every commit.
        assert crash_copy(db, tmp_path / "crash") == {"A", "B", "C", "D"}
        assert "could not be written into it" not in caplog.text
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_reads_follow_the_new_file_within_a_second(db: Path) -> None:
    writer = await Store.open(f"sqlite:///{db}")
    clock = [0.0]
    reader = await Store.open(f"sqlite:///{db}", upgrade=False, clock=lambda: clock[0])
    try:
        await writer.record_activations([make_record(machine_name="OLD")])
        assert [r.machine_name for r in (await reader.list_activations()).items] == ["OLD"]
        remove_all(db)
        await writer.record_activations([make_record(machine_name="NEW")])
        # The dashboard's store checks the file at most once a second (one stat call)...
        clock[0] += FILE_CHECK_INTERVAL
        # ...and then reads the new file instead of the lost one.
        assert [r.machine_name for r in (await reader.list_activations()).items] == ["NEW"]
        assert names(db) == {"NEW"}
    finally:
        await writer.close()
        await reader.close()


async def test_a_writer_started_without_a_file_creates_it_at_its_first_write(db: Path) -> None:
    # As the writer process opens it: its file may be deleted before it starts.
    store = await Store.open(f"sqlite:///{db}", upgrade=False, recreate=True)
    try:
        assert not db.exists()  # opening contacts nothing
        await store.record_activations([make_record(machine_name="FIRST")])
        assert names(db) == {"FIRST"}
        with contextlib.closing(sqlite3.connect(db)) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (
                migrate.head(),
            )
    finally:
        await store.close()


async def test_a_store_that_may_not_migrate_creates_no_file_it_never_had(db: Path) -> None:
    store = await Store.open(f"sqlite:///{db}", upgrade=False)
    try:
        with pytest.raises(StoreUnavailable, match=f"there is no database file {db}"):
            await store.list_activations()
        assert not db.exists()
    finally:
        await store.close()


async def test_connections_never_create_a_missing_file(db: Path) -> None:
    engine = make_engine(f"sqlite:///{db}", create=False)
    try:
        with pytest.raises(Exception, match="unable to open database file"):
            async with engine.connect():
                pass
        assert not db.exists()
    finally:
        await engine.dispose()
        # aiosqlite's thread of the failed connection reports its stop to this loop: let it,
        # before the loop closes.
        for thread in threading.enumerate():
            if "_connection_worker_thread" in thread.name:
                thread.join(timeout=10)


async def test_a_folder_that_cannot_hold_the_file_is_store_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreUnavailable, match="cannot create the database file"):
        await Store.open(f"sqlite:///{blocker}/kmsgate.db")


async def test_the_writer_keeps_to_one_connection_after_a_burst(db: Path) -> None:
    # Each connection keeps a page cache of its own (up to SQLITE_CACHE_KIB): batches going
    # round the pool fill every one of them (new machines: 114 against 104 MiB of PSS).
    store = await Store.open(f"sqlite:///{db}")
    used: list[int] = []

    def on_checkout(dbapi_connection: Any, *_: Any) -> None:
        used.append(id(dbapi_connection))

    try:

        async def read() -> None:
            async with store.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
                await asyncio.sleep(0.02)

        await asyncio.gather(*(read() for _ in range(10)))  # the pool's connections all open
        event.listen(store.engine.sync_engine.pool, "checkout", on_checkout)
        for _ in range(6):
            await store.record_activations([make_record()])
        assert len(used) >= 6
        assert len(set(used)) == 1
    finally:
        await store.close()


async def test_writes_run_with_the_small_page_cache_and_reads_with_the_large(db: Path) -> None:
    # The writer keeps every page it wrote: on the one connection the batches use, a large
    # cache filled with new activations' pages (the node 18 MiB over its memory budget).
    assert SQLITE_WRITER_CACHE_KIB < SQLITE_CACHE_KIB
    engine = make_engine(f"sqlite:///{db}")
    try:
        async with engine.connect() as conn:
            for _ in range(2):  # the same connection, back and forth
                await conn.execution_options(**{WRITE_OPTION: True})
                async with conn.begin():
                    size = (await conn.execute(text("PRAGMA cache_size"))).scalar_one()
                    assert size == -SQLITE_WRITER_CACHE_KIB
                await conn.execution_options(**{WRITE_OPTION: False})
                async with conn.begin():
                    size = (await conn.execute(text("PRAGMA cache_size"))).scalar_one()
                    assert size == -SQLITE_CACHE_KIB
    finally:
        await engine.dispose()


async def test_the_store_writes_its_batches_with_the_writers_page_cache(db: Path) -> None:
    store = await Store.open(f"sqlite:///{db}")
    statements: list[str] = []

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    try:
        event.listen(store.engine.sync_engine, "before_cursor_execute", on_execute)
        async with store.engine.connect() as conn, conn.begin():  # a read: the large cache
            await conn.execute(text("SELECT count(*) FROM clients"))
        await store.record_activations([make_record()])
        begin = statements.index("BEGIN IMMEDIATE")
        assert statements[:2] == [f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}", "BEGIN"]
        assert statements[begin - 1] == f"PRAGMA cache_size = -{SQLITE_WRITER_CACHE_KIB}"
    finally:
        await store.close()


async def test_a_burst_of_readers_opens_few_connections_and_keeps_fewer(db: Path) -> None:
    # Each SQLite connection is a thread holding its own memory; the node's budget counts them.
    engine = make_engine(f"sqlite:///{db}")
    open_now = most = 0

    def on_connect(*_: Any) -> None:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)

    def on_close(*_: Any) -> None:
        nonlocal open_now
        open_now -= 1

    event.listen(engine.sync_engine, "connect", on_connect)
    event.listen(engine.sync_engine.pool, "close", on_close)

    async def read(index: int) -> int:
        async with engine.connect() as conn:
            value = (await conn.execute(text(f"SELECT {index}"))).scalar_one()
            await asyncio.sleep(0.02)  # held: the others must open more or wait
            return int(value)

    try:
        assert await asyncio.gather(*(read(i) for i in range(40))) == list(range(40))
        assert most == SQLITE_POOL_SIZE + SQLITE_POOL_OVERFLOW <= 5
        assert open_now == SQLITE_POOL_SIZE <= 2  # the burst's extra ones are closed
    finally:
        await engine.dispose()


def test_a_new_database_and_its_folder_are_not_readable_by_others(tmp_path: Path) -> None:
    # The file holds the accounts' password hashes; a shell's umask 022 must not open it.
    old = os.umask(0o022)
    try:
        path = tmp_path / "data" / "kmsgate.db"
        create_sqlite_file(path)
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("CREATE TABLE t (x)")
            db.execute("INSERT INTO t VALUES (1)")
            db.commit()
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
    assert modes == {"kmsgate.db": 0o640, "kmsgate.db-wal": 0o640, "kmsgate.db-shm": 0o640}
