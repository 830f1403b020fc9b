"""Write-behind queue between the KMS host and the store: the activation path never waits."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from kmsgate.store.database import Store
from kmsgate.store.drafts import RecordDraft
from kmsgate.store.errors import StoreUnavailable

if TYPE_CHECKING:
    from kmsgate.store.retention import Retention

log = logging.getLogger("kmsgate.store")

# A batch failing this often with a non-transient error is written record by record, so
# that one bad record (the poison) is dropped instead of blocking the queue forever.
POISON_ATTEMPTS = 3
FIRST_BACKOFF = 0.05
CLOSING_RETRY = 0.1
# After this many failed attempts in a row every further attempt starts from fresh
# connections: a SQLite connection opened while the file was read-only would otherwise stay
# read-only for good (issue 11, S1), and a PostgreSQL one may be half dead.
RECONNECT_AFTER = 2


class RecordWriter:
    """Bounded queue flushed by one task: batches soon after records arrive, retries when down.

    submit() is synchronous and never raises or blocks; call it from the event loop thread.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_queue: int = 10000,
        flush_interval: float = 0.2,
        batch_size: int = 5000,
        on_drop: Callable[[RecordDraft], None] | None = None,
        on_written: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        max_backoff: float = 2.0,
        retention: Retention | None = None,
    ) -> None:
        """`flush_interval` caps how long a batch waits for more records; `max_backoff`
        caps the pause between retries while the database is unavailable; `retention`
        prunes between batches; `on_written` is called after each batch is written (or
        dropped record by record)."""
        if max_queue < 1 or batch_size < 1:
            raise ValueError("max_queue and batch_size must be positive")
        self._store = store
        self._max_queue = max_queue
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._on_drop = on_drop
        self._on_written = on_written
        self._clock = clock
        self._wall_clock = wall_clock
        self._max_backoff = max_backoff
        self._retention = retention
        self._queue: deque[RecordDraft] = deque()
        self._wake = asyncio.Event()
        self._closing_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._dropped = 0
        self._written = 0
        self._failures = 0
        # State-change logging: remember what was last reported.
        self._down_since: float | None = None
        self._full = False
        self._dropped_at_full = 0
        # For /healthz, in wall-clock seconds: the latest failure, and since when writes fail.
        self._last_error: tuple[float, str] | None = None
        self._failing_since: float | None = None
        self.reconnects = 0

    # ---------------------------------------------------------------- counters

    @property
    def flush_interval(self) -> float:
        """Seconds a record may wait for others to share its transaction."""
        return self._flush_interval

    @property
    def max_queue(self) -> int:
        """Records the queue holds at most."""
        return self._max_queue

    @property
    def depth(self) -> int:
        """Records waiting to be written."""
        return len(self._queue)

    @property
    def dropped(self) -> int:
        """Records lost: queue full, submitted after close, unwritable, or left at close."""
        return self._dropped

    @property
    def written(self) -> int:
        """Records committed to the database."""
        return self._written

    @property
    def failures(self) -> int:
        """Failed write attempts (each retry counts)."""
        return self._failures

    @property
    def last_error(self) -> tuple[float, str] | None:
        """(Unix time, message) of the latest failed write; kept after the store is back."""
        return self._last_error

    @property
    def failing_since(self) -> float | None:
        """Unix time of the first failure of the current outage; None while writes succeed."""
        return self._failing_since

    # ---------------------------------------------------------------- host side

    def submit(self, record: RecordDraft) -> bool:
        """Queue a record (a well-formed draft: checked_draft); False (and dropped + 1) when
        the queue is full or closed."""
        if self._closing or len(self._queue) >= self._max_queue:
            if not self._full and not self._closing:
                self._full = True
                self._dropped_at_full = self._dropped
                log.warning(
                    "store queue full (%d records): dropping new activation records",
                    len(self._queue),
                )
            self._drop(record)
            return False
        self._queue.append(record)
        self._wake.set()
        return True

    def submit_many(self, records: list[RecordDraft]) -> int:
        """submit() each record, in order, with one queue extension and one wake-up when they
        all fit (the inline writer's drafts, a ring read at a time); how many were queued."""
        if self._closing or len(self._queue) + len(records) > self._max_queue:
            return sum(map(self.submit, records))
        if records:
            self._queue.extend(records)
            self._wake.set()
        return len(records)

    def _drop(self, record: RecordDraft) -> None:
        self._dropped += 1
        if self._on_drop is not None:
            try:
                self._on_drop(record)
            except Exception:  # a metrics hook must not break the activation path
                log.exception("on_drop callback failed")

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start the flushing task (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="kmsgate-record-writer")

    async def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, write what is queued within `timeout`, then drop the rest."""
        if self._closed:
            return
        self._closing = True
        self._closing_event.set()
        self._wake.set()
        await self.start()  # records submitted before start() still get their flush
        assert self._task is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        finally:
            self._closed = True
        if self._queue:
            lost = len(self._queue)
            log.error("store writer closed with %d records unwritten (store unavailable)", lost)
            while self._queue:
                self._drop(self._queue.popleft())

    async def __aenter__(self) -> RecordWriter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---------------------------------------------------------------- flushing task

    async def _run(self) -> None:
        streak = 0  # consecutive failed attempts: drives the backoff and reconnection
        suspect = 0  # of those, non-transient ones: the head batch may hold a bad record
        while True:
            if not self._queue:
                if self._closing:
                    return
                await self._idle()
                continue
            if not self._closing and self._down_since is None:
                await self._gather()
            batch = list(itertools.islice(self._queue, self._batch_size))
            try:
                if streak >= RECONNECT_AFTER:
                    self.reconnects += 1
                    await self._store.reconnect()
                if suspect >= POISON_ATTEMPTS:
                    await self._write_one_by_one(batch)
                else:
                    await self._store.record_drafts(batch)
                    self._committed(len(batch))
            except StoreUnavailable as exc:
                self._failed(exc)
                await self._pause(streak)
                streak += 1
            # Anything else may be a record the database rejects: retry, then isolate it.
            except Exception as exc:  # noqa: BLE001 (the writer task must never die)
                self._failed(exc)
                await self._pause(streak)
                streak += 1
                suspect += 1
            else:
                streak = suspect = 0
                if self._on_written is not None:
                    self._on_written()
                retention = self._retention
                if retention is not None and retention.due_in() == 0 and not self._closing:
                    # One small delete between batches: records never wait for a whole pass,
                    # and a pass still runs under a load that never leaves the queue empty.
                    await retention.step()

    async def _idle(self) -> None:
        """Wait for records; prune meanwhile when retention is due."""
        retention = self._retention
        if retention is not None and retention.due_in() == 0:
            await retention.step()
            return
        self._wake.clear()
        timeout = None if retention is None else retention.due_in()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _gather(self) -> None:
        """Let more records join the batch, for at most flush_interval or until it is full.

        Batching is what keeps recording cheap under load: one transaction per few hundred
        activations instead of one per loop turn. Records still reach the database within
        flush_interval (--store-flush-interval, 0.2 s by default) of arriving.
        """
        deadline = self._clock() + self._flush_interval
        step = self._flush_interval / 4
        # A full queue takes no more: waiting for a batch larger than it would only stall.
        while len(self._queue) < min(self._batch_size, self._max_queue):
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            await asyncio.sleep(min(step, remaining))

    def _committed(self, count: int) -> None:
        queue = self._queue
        if count >= len(queue):
            queue.clear()  # the whole queue was the batch (the usual case): no loop per record
        else:
            for _ in range(count):
                queue.popleft()
        self._written += count
        self._failing_since = None
        if self._down_since is not None:
            log.warning(
                "store back after %.1f s: writing %d queued records",
                self._clock() - self._down_since,
                count + len(self._queue),
            )
            self._down_since = None
        if self._full and len(self._queue) < self._max_queue:
            self._full = False
            log.warning(
                "store queue has room again; %d records were dropped",
                self._dropped - self._dropped_at_full,
            )

    def _failed(self, exc: Exception) -> None:
        self._failures += 1
        now = self._wall_clock()
        self._last_error = (now, f"{exc}"[:500] or type(exc).__name__)
        if self._failing_since is None:
            self._failing_since = now
        if self._down_since is None:
            self._down_since = self._clock()
            state = "unavailable" if isinstance(exc, StoreUnavailable) else "write failed"
            log.warning("store %s: %s; queueing (%d records)", state, exc, len(self._queue))

    async def _pause(self, streak: int) -> None:
        """Capped exponential backoff; close() cuts it short and retries until its timeout."""
        delay = min(self._max_backoff, FIRST_BACKOFF * 2 ** min(streak, 30))
        if not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing_event.wait(), delay)
        if self._closing:
            await asyncio.sleep(min(delay, CLOSING_RETRY))

    async def _write_one_by_one(self, batch: list[RecordDraft]) -> None:
        """Isolate the poison: write each record alone, drop the ones that still fail."""
        bad = 0
        for record in batch:
            try:
                await self._store.record_drafts([record])
            except StoreUnavailable:
                raise  # the database went away: back to plain retrying
            except Exception as exc:  # noqa: BLE001 (this one record cannot be stored)
                # Poison only if the store takes other writes: an outage whose errors do
                # not look transient must not cost a record (StoreUnavailable: retry all).
                await self._store.probe_write()
                bad += 1
                self._queue.popleft()
                self._drop(record)
                log.error("dropping an activation record the store rejects: %s", exc)
            else:
                self._committed(1)
        if bad:
            log.error("dropped %d unwritable records of a batch of %d", bad, len(batch))
