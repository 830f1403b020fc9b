"""Keeps the seen-client count (--count-mode seen) in the store: across restarts and nodes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from kmsgate.protocol.counting import COUNT_WINDOW_SECONDS, MAX_REMEMBERED, SeenClients
from kmsgate.protocol.engine import filetime_from_unix, unix_from_filetime
from kmsgate.store.errors import StoreError
from kmsgate.store.seen import SeenMachines, SeenRow

log = logging.getLogger("kmsgate.server")

# Another node writes a machine up to one interval after it asked; re-reading this much
# before the newest time already merged catches those late rows (merging is idempotent).
PULL_OVERLAP = timedelta(seconds=60)
PULL_LIMIT = 10_000
PRUNE_EVERY = 3600.0
WINDOW = timedelta(seconds=COUNT_WINDOW_SECONDS)


def _to_time(filetime: int) -> datetime:
    return datetime.fromtimestamp(unix_from_filetime(filetime), UTC)


def _to_filetime(when: datetime) -> int:
    return filetime_from_unix(when.timestamp())


class SeenCountSync:
    """Loads the recent machines at start, then every `interval` s writes this node's new ones
    and merges the other nodes'. Store errors are logged and retried, never raised."""

    def __init__(
        self,
        seen: SeenClients,
        repository: SeenMachines,
        *,
        interval: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._seen = seen
        self._repository = repository
        self._interval = interval
        self._clock = clock
        self._watermark: datetime | None = None
        self._last_prune = 0.0
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _merge(self, rows: list[SeenRow]) -> None:
        self._seen.merge((counter, cmid, _to_filetime(when)) for counter, cmid, when in rows)
        if rows:
            newest = max(when for _, _, when in rows)
            if self._watermark is None or newest > self._watermark:
                self._watermark = newest

    async def load(self) -> int:
        """Merge what the store remembers of the last 30 days; returns the rows read."""
        since = self._now() - WINDOW
        rows = await self._repository.recent(since, MAX_REMEMBERED)
        self._merge(rows)
        if self._watermark is None:
            self._watermark = since
        return len(rows)

    async def sync_once(self) -> None:
        """Write this node's changes, read the others', prune now and then."""
        dirty = self._seen.dirty()
        try:
            await self._repository.save([(c, m, _to_time(t)) for c, m, t in dirty])
        except StoreError:
            # Hand them back so the next round writes them (bounded: one entry per machine).
            self._seen.mark_dirty(dirty)
            raise
        if self._watermark is None:
            await self.load()
        else:
            rows = await self._repository.after(self._watermark - PULL_OVERLAP, PULL_LIMIT)
            self._merge(rows)
        if self._clock() - self._last_prune >= PRUNE_EVERY:
            self._last_prune = self._clock()
            pruned = await self._repository.prune(self._now() - WINDOW - timedelta(days=1))
            if pruned:
                log.debug("forgot %d machines not seen for 30 days", pruned)

    async def start(self) -> None:
        """Load (a store that is down only delays it) and start the periodic task."""
        try:
            loaded = await self.load()
        except StoreError as exc:
            log.warning("client count: store unavailable, counting from zero for now: %s", exc)
        else:
            log.info("client count: %d machines seen in the last 30 days", loaded)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._round()

    async def _round(self) -> None:
        try:
            await self.sync_once()
        except StoreError as exc:
            if not self._failing:
                log.warning("client count not shared through the store: %s", exc)
            self._failing = True
        else:
            if self._failing:
                log.info("client count shared through the store again")
            self._failing = False

    async def stop(self) -> None:
        """Stop the task and write what is pending."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._round()
