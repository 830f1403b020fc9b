"""RecordWriter: prompt flushes, bounded queue, outages of a real database, close()."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import pytest

from kmsgate.recording.writer import POISON_ATTEMPTS, RecordWriter
from kmsgate.store import engine as store_engine
from kmsgate.store.database import Store
from kmsgate.store.drafts import RecordDraft
from kmsgate.store.errors import StoreError, StoreUnavailable
from tests.support.postgres import PostgresServer
from tests.support.records import make_draft, make_record

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def wait_for(predicate: object, timeout: float = 5.0) -> None:
    """Poll a condition until it holds, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


class FakeStore:
    """Stands in for Store in unit tests: records calls, fails on demand."""

    def __init__(self) -> None:
        self.batches: list[list[RecordDraft]] = []
        self.fail_with: Exception | None = None
        self.reject_name: str | None = None  # a "poison" record the database refuses
        self.refuse_writes = False  # every write fails, with an error that looks permanent
        self.delay = 0.0
        self.reconnects = 0

    async def reconnect(self) -> None:
        self.reconnects += 1

    async def probe_write(self) -> None:
        if self.fail_with is not None or self.refuse_writes:
            raise StoreUnavailable("the store takes no writes")

    async def record_drafts(self, records: Sequence[RecordDraft]) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_with is not None:
            raise self.fail_with
        if self.refuse_writes:
            raise StoreError("attempt to write a readonly database")
        if self.reject_name is not None and any(r[2] == self.reject_name for r in records):
            raise StoreError("value too long for type character varying(15)")
        self.batches.append(list(records))

    @property
    def stored(self) -> list[RecordDraft]:
        return [r for batch in self.batches for r in batch]


def writer_for(fake: FakeStore, **kwargs: object) -> RecordWriter:
    kwargs.setdefault("max_backoff", 0.05)
    return RecordWriter(cast(Store, fake), **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------ with a real database


async def test_write_then_read(store: Store) -> None:
    writer = RecordWriter(store, flush_interval=0.2)
    await writer.start()
    cmid = uuid.uuid4()
    started = time.monotonic()
    assert writer.submit(make_draft(client_machine_id=cmid))
    assert writer.submit(make_draft(client_machine_id=cmid))
    await wait_for(lambda: writer.written == 2)
    # Within the flush interval, not on a longer timer (the slack is for a loaded CI
    # machine: PostgreSQL once took 0.55 s there).
    assert time.monotonic() - started < 0.2 + 1.5
    client = await store.get_client(cmid)
    assert client is not None and client.request_count == 2
    assert (writer.depth, writer.dropped, writer.failures) == (0, 0, 0)
    await writer.close()


async def test_close_flushes_everything_queued(store: Store) -> None:
    writer = RecordWriter(store, batch_size=100)
    await writer.start()
    for _ in range(1050):
        assert writer.submit(make_draft())
    await writer.close()
    assert (writer.written, writer.depth, writer.dropped) == (1050, 0, 0)
    assert (await store.stats(make_record().time)).activations == 1050
    assert not writer.submit(make_draft())  # closed: refused and counted
    assert writer.dropped == 1


_KILL_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, uuid
    from kmsgate.store.database import Store
    from kmsgate.recording.writer import RecordWriter
    from tests.support.records import make_draft, make_record

    async def main() -> None:
        store = await Store.open(sys.argv[1])
        writer = RecordWriter(store)
        await writer.start()
        writer.submit(make_draft(client_machine_id=uuid.UUID(sys.argv[2])))
        print("submitted", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


async def test_sigkill_one_second_after_an_activation_loses_nothing(db_url: str) -> None:
    cmid = uuid.uuid4()
    process = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, db_url, str(cmid)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 30)
        assert line.strip() == b"submitted"
        await asyncio.sleep(1.0)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    store = await Store.open(db_url, upgrade=False)
    try:
        client = await store.get_client(cmid)
        assert client is not None and client.request_count == 1
    finally:
        await store.close()


async def test_sqlite_locked_then_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Root ignores file modes, so "read-only" cannot be staged; another process holding the
    # write lock is the real-world SQLite outage. A short busy timeout keeps the test quick.
    monkeypatch.setattr(store_engine, "SQLITE_BUSY_TIMEOUT_MS", 50)
    path = tmp_path / "kmsgate.db"
    store = await Store.open(f"sqlite:///{path}")
    writer = RecordWriter(store, max_backoff=0.1)
    await writer.start()
    locker = sqlite3.connect(path, isolation_level=None)
    caplog.set_level(logging.WARNING, logger="kmsgate.store")
    try:
        locker.execute("BEGIN EXCLUSIVE")
        for _ in range(20):
            assert writer.submit(make_draft())
        await wait_for(lambda: writer.failures >= 3)
        assert writer.written == 0
        assert writer.depth == 20
        for _ in range(5):
            assert writer.submit(make_draft())  # still accepted while down
        locker.execute("COMMIT")
        await wait_for(lambda: writer.written == 25)
    finally:
        locker.close()
        await writer.close()
        await store.close()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("store unavailable" in m for m in messages) == 1, messages
    assert sum("store back" in m for m in messages) == 1, messages


async def test_postgres_stopped_then_restarted(
    pg_server: PostgresServer, pg_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = await Store.open(pg_database)
    writer = RecordWriter(store, max_backoff=0.2)
    await writer.start()
    caplog.set_level(logging.WARNING, logger="kmsgate.store")
    cmids = [uuid.uuid4() for _ in range(30)]
    try:
        assert writer.submit(make_draft(client_machine_id=cmids[0]))
        await wait_for(lambda: writer.written == 1)
        pg_server.stop()
        try:
            started = time.monotonic()
            for cmid in cmids[1:]:
                assert writer.submit(make_draft(client_machine_id=cmid))
            assert time.monotonic() - started < 0.05  # the host side never waits
            await wait_for(lambda: writer.failures >= 2, timeout=15)
            assert writer.written == 1
        finally:
            pg_server.start()
        await wait_for(lambda: writer.written == 30, timeout=15)
        for cmid in cmids:
            assert await store.get_client(cmid) is not None
    finally:
        await writer.close()
        await store.close()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("store unavailable" in m for m in messages) == 1, messages
    assert sum("store back" in m for m in messages) == 1, messages


# ------------------------------------------------------------------ queue behaviour


async def test_batches_gather_what_arrives_together() -> None:
    fake = FakeStore()
    writer = writer_for(fake, batch_size=500)
    await writer.start()
    for _ in range(1200):
        writer.submit(make_draft())
    await wait_for(lambda: writer.written == 1200)
    assert [len(b) for b in fake.batches] == [500, 500, 200]
    await writer.close()


async def test_a_queue_smaller_than_a_batch_is_written_once_full() -> None:
    # --store-queue below the batch size: the writer's queue is the whole batch it can get.
    fake = FakeStore()
    writer = writer_for(fake, batch_size=2000, max_queue=100, flush_interval=60)
    await writer.start()
    for _ in range(100):
        writer.submit(make_draft())
    await wait_for(lambda: writer.written == 100)  # not after the 60 s flush interval
    assert [len(b) for b in fake.batches] == [100]
    await writer.close()


async def test_queue_full_drops_new_records_and_counts_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeStore()
    fake.fail_with = StoreUnavailable("connection refused")
    dropped: list[RecordDraft] = []
    writer = writer_for(fake, max_queue=10, on_drop=dropped.append)
    caplog.set_level(logging.WARNING, logger="kmsgate.store")
    await writer.start()
    records = [make_draft(machine_name=f"PC-{i}") for i in range(15)]
    accepted = [writer.submit(r) for r in records]
    assert accepted == [True] * 10 + [False] * 5
    assert (writer.depth, writer.dropped) == (10, 5)
    assert dropped == records[10:]  # the newest are dropped, the queued oldest kept
    await wait_for(lambda: writer.failures >= 2)
    fake.fail_with = None
    await wait_for(lambda: writer.written == 10)
    assert fake.stored == records[:10]
    assert writer.submit(make_draft())  # room again
    await writer.close()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("queue full" in m for m in messages) == 1, messages
    assert sum("room again" in m and "5 records" in m for m in messages) == 1, messages


async def test_submit_many_queues_like_submit_one_by_one() -> None:
    """All at once when they fit; past the bound, the same drops submit() makes, in order."""
    fake = FakeStore()
    fake.fail_with = StoreUnavailable("connection refused")  # nothing leaves the queue
    dropped: list[RecordDraft] = []
    writer = writer_for(fake, max_queue=10, on_drop=dropped.append)
    await writer.start()
    records = [make_draft(machine_name=f"PC-{i}") for i in range(15)]
    assert writer.submit_many(records[:6]) == 6
    assert writer.submit_many([]) == 0
    assert writer.submit_many(records[6:]) == 4
    assert (writer.depth, writer.dropped) == (10, 5)
    assert dropped == records[10:]
    fake.fail_with = None
    await wait_for(lambda: writer.written == 10)
    assert fake.stored == records[:10]
    await writer.close()
    assert writer.submit_many(records[:2]) == 0 and writer.dropped == 7  # closed


async def test_failing_on_drop_hook_does_not_break_submit() -> None:
    def broken(_: RecordDraft) -> None:
        raise RuntimeError("metrics down")

    writer = writer_for(FakeStore(), max_queue=1, on_drop=broken)
    assert writer.submit(make_draft())
    assert not writer.submit(make_draft())
    assert writer.dropped == 1
    await writer.close()


async def test_backoff_is_capped() -> None:
    fake = FakeStore()
    fake.fail_with = StoreUnavailable("down")
    writer = writer_for(fake, max_backoff=0.02)
    await writer.start()
    writer.submit(make_draft())
    # Uncapped doubling from 50 ms would allow only ~5 attempts in a second.
    await asyncio.sleep(1.0)
    assert writer.failures >= 20
    fake.fail_with = None
    await wait_for(lambda: writer.written == 1)
    await writer.close()


async def test_probe_write_changes_a_row_of_a_writable_store(store: Store) -> None:
    await store.probe_write()
    await store.probe_write()
    async with store._read() as conn:
        probes = (
            await conn.exec_driver_sql(
                "SELECT value FROM counters WHERE name = 'store:write_probes'"
            )
        ).scalar_one()
    assert probes == 2


async def test_a_poison_record_is_dropped_and_the_rest_written() -> None:
    fake = FakeStore()
    fake.reject_name = "BAD"
    writer = writer_for(fake)
    await writer.start()
    good = [make_draft(machine_name=f"OK-{i}") for i in range(4)]
    for record in [good[0], good[1], make_draft(machine_name="BAD"), good[2], good[3]]:
        writer.submit(record)
    await wait_for(lambda: writer.written == 4)
    assert writer.dropped == 1
    assert fake.stored == good
    await writer.close()


async def test_an_outage_with_permanent_looking_errors_drops_nothing() -> None:
    # Errors that do not look transient make the writer isolate records one by one; while
    # the store takes no write at all, none of them may be judged poison and dropped.
    fake = FakeStore()
    fake.refuse_writes = True
    writer = writer_for(fake)
    await writer.start()
    records = [make_draft(machine_name=f"PC-{i}") for i in range(5)]
    for record in records:
        writer.submit(record)
    await wait_for(lambda: writer.failures >= POISON_ATTEMPTS + 3)
    assert (writer.dropped, writer.written) == (0, 0)
    fake.refuse_writes = False
    await wait_for(lambda: writer.written == 5)
    assert fake.stored == records and writer.dropped == 0
    await writer.close()


async def test_close_gives_up_after_its_timeout() -> None:
    fake = FakeStore()
    fake.fail_with = StoreUnavailable("down")
    writer = writer_for(fake)
    await writer.start()
    for _ in range(7):
        writer.submit(make_draft())
    started = time.monotonic()
    await writer.close(timeout=0.3)
    assert time.monotonic() - started < 1.0
    assert (writer.written, writer.dropped, writer.depth) == (0, 7, 0)


async def test_close_retries_until_the_store_comes_back() -> None:
    fake = FakeStore()
    fake.fail_with = StoreUnavailable("down")
    writer = writer_for(fake, max_backoff=10.0)  # a long backoff must not delay close()
    await writer.start()
    writer.submit(make_draft())
    await wait_for(lambda: writer.failures >= 1)

    async def recover() -> None:
        await asyncio.sleep(0.2)
        fake.fail_with = None

    task = asyncio.create_task(recover())
    started = time.monotonic()
    await writer.close(timeout=3.0)
    await task
    assert time.monotonic() - started < 1.0
    assert (writer.written, writer.dropped) == (1, 0)


async def test_close_without_start_still_flushes() -> None:
    fake = FakeStore()
    writer = writer_for(fake)
    writer.submit(make_draft())
    await writer.close()
    assert writer.written == 1


async def test_slow_store_does_not_block_submit() -> None:
    fake = FakeStore()
    fake.delay = 0.3
    writer = writer_for(fake, max_queue=100)
    await writer.start()
    started = time.monotonic()
    results = [writer.submit(make_draft()) for _ in range(150)]
    assert time.monotonic() - started < 0.05
    assert results.count(True) == 100
    assert writer.dropped == 50
    await writer.close()
    assert writer.written == 100
