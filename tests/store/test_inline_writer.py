"""--store-writer inline: records go through a ring file, which outlives a SIGKILL."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import cast

import pytest

from kmsgate.recording.inline import InlineWriter
from kmsgate.recording.ring_memory import RingMemory
from kmsgate.store.database import Store
from kmsgate.store.errors import StoreError
from tests.store.test_writer import FakeStore, wait_for
from tests.store.test_writer_process import ROOT, drafts

pytestmark = pytest.mark.integration


def count_rows(path: Path) -> tuple[int, int]:
    with sqlite3.connect(path) as db:
        (total, distinct) = db.execute(
            "SELECT count(*), count(DISTINCT time) FROM activations"
        ).fetchone()
    return total, distinct


async def test_drafts_are_written_and_the_ring_is_released(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite:///{tmp_path / 'kms.db'}")
    try:
        async with InlineWriter(
            store, node="n", flush_interval=0.05, ring_path=tmp_path / "records.ring"
        ) as writer:
            for draft in drafts(250):
                writer.submit(draft)
            assert writer.hand_over()
            await wait_for(lambda: writer.written == 250 and writer.depth == 0)
        assert (writer.written, writer.dropped) == (250, 0)
    finally:
        await store.close()
    assert count_rows(tmp_path / "kms.db") == (250, 250)


def test_what_was_handed_over_before_a_sigkill_is_written_at_the_next_start(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'kms.db'}"
    ring = tmp_path / "records.ring"
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        from pathlib import Path
        from kmsgate.store.database import Store
        from kmsgate.recording.inline import InlineWriter
        from tests.store.test_writer_process import drafts

        async def main():
            store = await Store.open({url!r})
            ring = Path({str(ring)!r})
            writer = InlineWriter(store, node="n", flush_interval=1.0, ring_path=ring)
            await writer.start()
            for draft in drafts(300):
                writer.submit(draft)
            assert writer.hand_over()
            os.kill(os.getpid(), signal.SIGKILL)  # before the writer's first batch

        asyncio.run(main())
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL
    assert count_rows(tmp_path / "kms.db") == (0, 0)  # nothing committed: all in the ring

    async def next_start() -> InlineWriter:
        store = await Store.open(url)
        try:
            writer = InlineWriter(store, node="n", flush_interval=0.05, ring_path=ring)
            async with writer:
                await wait_for(lambda: writer.written == 300, timeout=15)
            return writer
        finally:
            await store.close()

    import asyncio

    writer = asyncio.run(next_start())
    assert (writer.written, writer.dropped) == (300, 0)
    assert count_rows(tmp_path / "kms.db") == (300, 300)  # each once


async def test_a_ring_file_in_use_by_another_node_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "records.ring"
    first = RingMemory.file(path, 100)
    try:
        with pytest.raises(StoreError, match="in use by another kmsgate node"):
            RingMemory.file(path, 100)
    finally:
        first.close()
    RingMemory.file(path, 100).close()  # free again once the first let go


async def test_an_unreadable_ring_file_is_replaced_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "records.ring"
    path.write_bytes(os.urandom(64 << 10))
    memory = RingMemory.file(path, 100)
    try:
        assert memory.left_over == 0 and memory.ring.append(b"works")
    finally:
        memory.close()
    assert "is unusable" in caplog.text


async def test_a_changed_queue_size_waits_until_the_ring_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "records.ring"
    memory = RingMemory.file(path, 100)
    memory.ring.append(b"left over")
    memory.close()
    kept = RingMemory.file(path, 5000)
    try:
        assert (kept.left_over, kept.ring.max_entries) == (1, 100)
        cursor = kept.ring.head()
        assert kept.ring.read(cursor, 10) == [b"left over"]
        kept.ring.release(cursor)
    finally:
        kept.close()
    resized = RingMemory.file(path, 5000)
    try:
        assert (resized.left_over, resized.ring.max_entries) == (0, 5000)
    finally:
        resized.close()


async def test_a_full_ring_holds_answers_until_the_writer_makes_room(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite:///{tmp_path / 'kms.db'}")
    try:
        async with InlineWriter(store, node="n", max_queue=100, flush_interval=0.05) as writer:
            made = drafts(1000)
            for draft in made:
                writer.submit(draft)
            assert not writer.hand_over()  # 100 in the ring, the rest waits with its answers
            assert writer.depth == 1000
            released: list[bool] = []
            writer.when_handed_over(lambda: released.append(True))
            await wait_for(lambda: bool(released), timeout=30)
            await wait_for(lambda: writer.written == 1000, timeout=30)
        assert (writer.written, writer.dropped) == (1000, 0)
    finally:
        await store.close()


async def test_records_the_store_refuses_at_close_stay_in_the_ring_file(tmp_path: Path) -> None:
    path = tmp_path / "records.ring"
    down = FakeStore()
    down.fail_with = StoreError("database is down")
    writer = InlineWriter(
        cast(Store, down), node="n", flush_interval=0.01, close_timeout=0.3, ring_path=path
    )
    await writer.start()
    for draft in drafts(20):
        writer.submit(draft)
    assert writer.hand_over()
    await writer.close()
    assert writer.written == 0
    up = FakeStore()
    again = InlineWriter(cast(Store, up), node="n", flush_interval=0.01, ring_path=path)
    async with again:
        await wait_for(lambda: again.written == 20)
    assert len(up.stored) == 20


async def test_a_draft_too_large_for_any_ring_is_dropped_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="kmsgate")
    up = FakeStore()
    good = drafts(2)
    huge = (*good[0][:3], "X" * 2_000_000, *good[0][4:])  # over a quarter of the ring
    async with InlineWriter(cast(Store, up), node="n", flush_interval=0.01) as writer:
        for draft in (good[0], huge, good[1]):
            assert writer.submit(draft)  # type: ignore[arg-type]
        assert writer.hand_over()
        await wait_for(lambda: writer.written == 2)
    assert writer.dropped == 1
    assert "cannot be sent" in caplog.text


async def test_close_writes_the_whole_ring_not_just_one_batch(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite:///{tmp_path / 'kms.db'}")
    try:
        writer = InlineWriter(store, node="n", flush_interval=0.05, batch_size=500)
        await writer.start()
        for draft in drafts(3000):
            writer.submit(draft)
        assert writer.hand_over()
        await writer.close()  # at once: the reader has taken at most one batch so far
        assert (writer.written, writer.dropped) == (3000, 0)
    finally:
        await store.close()
    assert count_rows(tmp_path / "kms.db") == (3000, 3000)


async def test_a_commit_releases_the_ring_at_once_not_at_the_next_poll() -> None:
    """Full batches flow without waiting for the reader's poll (15 s here): held answers
    leave as soon as their records' batch before them is committed."""
    up = FakeStore()
    made = drafts(300)
    async with InlineWriter(
        cast(Store, up), node="n", max_queue=100, batch_size=100, flush_interval=30.0
    ) as writer:
        for draft in made:
            writer.submit(draft)
        assert not writer.hand_over()  # 100 in the ring, 200 wait with their answers
        released: list[bool] = []
        writer.when_handed_over(lambda: released.append(True))
        await wait_for(lambda: writer.written == 300 and bool(released), timeout=10)
        assert [len(batch) for batch in up.batches] == [100, 100, 100]


async def test_a_failing_waiter_neither_blocks_the_others_nor_stops_the_reader(
    caplog: pytest.LogCaptureFixture,
) -> None:
    up = FakeStore()
    async with InlineWriter(
        cast(Store, up), node="n", max_queue=10, batch_size=10, flush_interval=0.01
    ) as writer:
        made = drafts(40)
        for draft in made[:30]:
            writer.submit(draft)
        assert not writer.hand_over()

        def broken() -> None:
            raise RuntimeError("a bug in a connection")

        released: list[bool] = []
        writer.when_handed_over(broken)
        writer.when_handed_over(lambda: released.append(True))
        await wait_for(lambda: bool(released), timeout=10)
        for draft in made[30:]:  # the reader still runs
            writer.submit(draft)
        writer.hand_over()
        await wait_for(lambda: writer.written == 40, timeout=10)
    assert "releasing held answers failed" in caplog.text


async def test_the_reader_is_woken_at_once_when_a_quarter_of_the_ring_waits() -> None:
    # Below the mark the reader's own poll (0.5 s away here) takes the drafts; at the mark
    # it is woken at once, since a ring that fills holds answers back until it is read.
    up = FakeStore()
    made = drafts(10)
    async with InlineWriter(cast(Store, up), node="n", max_queue=40, flush_interval=1) as writer:
        await asyncio.sleep(0.05)  # the reader took its first pass and waits for its poll
        for draft in made[:9]:
            assert writer.submit(draft)
        assert writer.hand_over() and not writer._wake.is_set()
        assert writer.submit(made[9]) and writer._wake.is_set()
    assert up.stored == made


async def test_close_returns_when_a_commit_wakes_the_reader_at_that_moment() -> None:
    """The reader is woken (a commit) in the same loop turn as close() stops it: on Python
    3.11, a cancel at that moment was swallowed by asyncio.wait_for and close() hung."""
    up = FakeStore()
    writer = InlineWriter(cast(Store, up), node="n", flush_interval=1.0)
    await writer.start()
    await asyncio.sleep(0.05)  # the reader waits for its next poll, 0.5 s away
    writer._wake.set()  # as on_written does
    closing = asyncio.create_task(writer.close())
    done, _ = await asyncio.wait({closing}, timeout=10)  # not a timing: it hung for good
    assert closing in done
    task = writer._task
    assert task is not None and task.done() and not task.cancelled()
    assert task.exception() is None  # the reader stopped between two reads, as told


async def test_drafts_kept_beside_the_ring_stay_bounded_while_the_store_lags() -> None:
    # Past the bound, entries are decoded from the ring instead: every record still lands
    # once, in order, and memory does not follow a store that lags.
    slow = FakeStore()
    slow.delay = 0.05
    made = drafts(400)
    async with InlineWriter(
        cast(Store, slow), node="n", max_queue=1000, batch_size=40, flush_interval=0.01
    ) as writer:
        writer._intake.max_known = 50
        for draft in made:
            writer.submit(draft)
        assert writer.hand_over()
        assert writer._intake.known is not None and len(writer._intake.known) == 50
        await wait_for(lambda: writer.written == 400, timeout=30)
        assert not writer._intake.known
    assert slow.stored == made
