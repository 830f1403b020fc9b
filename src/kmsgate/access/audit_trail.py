"""The gateway's audit trail: a bounded queue flushed off the activation path, and refused
connections tallied per source and minute."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from kmsgate.store.audit import AuditEvent
from kmsgate.store.errors import StoreError
from kmsgate.store.gateway import GatewayStore

log = logging.getLogger("kmsgate.gateway")
Clock = Callable[[], datetime]
AUDIT_QUEUE = 10000
# Refused connections are audited as one row per source address and minute; this many
# sources wait for their minute to end at most, the rest share one "other sources" row.
MAX_REFUSAL_SOURCES = 1024
REFUSAL_FLUSH_EVERY = 5.0


def utc_now() -> datetime:
    """The current time, timezone-aware UTC: the default clock of the gateway and its trail."""
    return datetime.now(UTC)


@dataclass(slots=True)
class _Tally:
    count: int
    first: datetime


TallyKey = tuple[str | None, datetime, str]


class RefusalTally:
    """Refused connections counted per (source, minute, reason), in bounded memory."""

    OTHER = None  # the address of the row gathering sources beyond the cap

    def __init__(self, max_sources: int = MAX_REFUSAL_SOURCES) -> None:
        self._max = max_sources
        self._counts: dict[TallyKey, _Tally] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def add(self, address: str, detail: str, now: datetime) -> None:
        minute = now.replace(second=0, microsecond=0)
        key: TallyKey = (address, minute, detail)
        entry = self._counts.get(key)
        if entry is None:
            if len(self._counts) >= self._max:
                key = (self.OTHER, minute, detail)
                entry = self._counts.get(key)
            if entry is None:
                entry = self._counts[key] = _Tally(0, now)
        entry.count += 1

    def take(self, node: str, before: datetime | None = None) -> list[AuditEvent]:
        """Rows of the minutes that began before `before` (all when None), removed from here."""
        limit = None if before is None else before.replace(second=0, microsecond=0)
        rows = []
        for key in [k for k in self._counts if limit is None or k[1] < limit]:
            address, minute, detail = key
            tally = self._counts.pop(key)
            count = tally.count
            sources = (
                "this source" if address is not None else f"sources beyond the first {self._max}"
            )
            rows.append(
                AuditEvent(
                    time=tally.first,
                    kind="connection_refused",
                    node=node,
                    address=address,
                    detail=f"{detail}: {count} connection(s) from {sources} "
                    f"in the minute from {minute:%H:%M} UTC",
                    count=count,
                )
            )
        return rows


class AuditWriter:
    """A bounded queue of audit events flushed by one task, off the activation path."""

    def __init__(
        self,
        store: GatewayStore,
        max_queue: int = AUDIT_QUEUE,
        *,
        node: str = "",
        clock: Clock = utc_now,
        max_refusal_sources: int = MAX_REFUSAL_SOURCES,
    ) -> None:
        self._store = store
        self._queue: deque[AuditEvent] = deque()
        self._max = max_queue
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._node = node
        self._clock = clock
        self.refusals = RefusalTally(max_refusal_sources)
        self.dropped = 0

    def submit(self, event: AuditEvent) -> None:
        if len(self._queue) >= self._max:
            self.dropped += 1
            return
        self._queue.append(event)
        self._wake.set()

    def count_refusal(self, address: str, detail: str) -> None:
        """A refused connection: audited with the others of its source and minute."""
        self.refusals.add(address, detail, self._clock())

    async def start(self, refusal_flush_every: float = REFUSAL_FLUSH_EVERY) -> None:
        self._task = asyncio.create_task(self._run())
        self._ticker = asyncio.create_task(self._tick(refusal_flush_every))

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush(complete_minutes_only=True)

    async def _tick(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            if self.refusals:
                self._wake.set()

    async def flush(self, *, complete_minutes_only: bool = False) -> None:
        """Write everything queued (and the refusal counts); on a store error keep it."""
        async with self._lock:  # the task and close()/tests may flush at once
            before = self._clock() if complete_minutes_only else None
            for row in self.refusals.take(self._node, before):
                self.submit(row)
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        while self._queue:
            batch = list(self._queue)[:500]
            try:
                await self._store.add_audit(batch)
            except StoreError as exc:
                log.warning("audit trail not written yet (%d queued): %s", len(self._queue), exc)
                await asyncio.sleep(1.0)
                self._wake.set()
                return
            for _ in batch:
                self._queue.popleft()

    async def close(self) -> None:
        for task in (self._task, self._ticker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.flush()
