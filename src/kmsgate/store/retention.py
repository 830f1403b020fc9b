"""--retention-days: old activations, refusals, audit rows, clients and windows are deleted.

The record writer runs one pass at start and then hourly, as a series of short transactions
of at most `batch_size` rows each, between its own batches: a pass never holds the database
(or SQLite's single write lock) for longer than one small delete. A batch that takes longer
than BATCH_SECONDS halves the next one (SQLite deletes clients slowly: six indexes and the
search index's trigger), and quick ones let it grow back. Several nodes sharing
PostgreSQL may prune at once: each takes rows the others have not locked (SKIP LOCKED).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from kmsgate.store.database import Store
from kmsgate.store.errors import StoreError
from kmsgate.store.schema import activations, audit_events, clients, counters, windows

log = logging.getLogger("kmsgate.store")

DEFAULT_BATCH = 2000
BATCH_SECONDS = 0.1
SMALLEST_BATCH = 50
FIRST_BATCH = 250  # per table, until its own pace is known
PASS_INTERVAL = 3600.0
RETRY_INTERVAL = 300.0
# Quotas count the windows consumed in the last 30 days (access/gateway.py's MONTH): a window
# is kept at least this long, whatever --retention-days says, or a short retention would
# hand quota back.
WINDOW_MINIMUM = timedelta(days=32)
TABLES = ("activations", "audit_events", "clients", "windows")


@dataclass(slots=True)
class PruneCounts:
    """Rows one pass deleted, per table."""

    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))

    @property
    def total(self) -> int:
        """Rows deleted in all tables."""
        return sum(self.deleted.values())


class Retention:
    """Deletes what is older than `days` days; step() does one small transaction."""

    def __init__(
        self,
        store: Store,
        days: int,
        *,
        batch_size: int = DEFAULT_BATCH,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        clock: Callable[[], float] = time.monotonic,
        interval: float = PASS_INTERVAL,
    ) -> None:
        """`now` gives the wall time cutoffs are computed from, `clock` schedules passes."""
        if days < 1 or batch_size < 1:
            raise ValueError("days and batch_size must be positive")
        self._store = store
        self.days = days
        self._batch_size = batch_size
        # Rows per delete, per table, adapted to how long the last one took.
        self._batches = dict.fromkeys(TABLES, min(batch_size, FIRST_BATCH))
        self._now = now
        self._clock = clock
        self._interval = interval
        self._next_pass = clock()  # the first pass runs at start
        self._table: int | None = None  # index into TABLES while a pass runs
        self._cutoff = self._window_cutoff = datetime.min.replace(tzinfo=UTC)
        self._counts = PruneCounts()
        self._started = 0.0
        self.passes = 0  # completed passes
        self.last = PruneCounts()  # what the last completed pass deleted
        self._limit = batch_size

    @property
    def running(self) -> bool:
        """A pass has started and has tables left."""
        return self._table is not None

    def due_in(self) -> float:
        """Seconds until the next step should run (0 while a pass is running)."""
        if self.running:
            return 0.0
        return max(0.0, self._next_pass - self._clock())

    async def step(self) -> None:
        """Delete one batch of the current table; start a pass if one is due.

        Never raises: a failing database is logged and the pass retried a few minutes later.
        """
        if self._table is None:
            if self._clock() < self._next_pass:
                return
            self._begin()
        try:
            await self._delete_next()
        except StoreError as exc:
            log.warning("retention pass stopped, retrying in %.0f s: %s", RETRY_INTERVAL, exc)
            self._table = None
            self._next_pass = self._clock() + RETRY_INTERVAL

    async def run_pass(self) -> PruneCounts:
        """One whole pass now, whatever the schedule; StoreError if the database fails."""
        self._begin()
        while self._table is not None:
            await self._delete_next()
        return self.last

    def _begin(self) -> None:
        now = self._now()
        self._cutoff = now - timedelta(days=self.days)
        self._window_cutoff = min(self._cutoff, now - WINDOW_MINIMUM)
        self._counts = PruneCounts()
        self._table = 0
        self._started = self._clock()

    async def _delete_next(self) -> None:
        assert self._table is not None
        name = TABLES[self._table]
        batch, started = self._batches[name], time.monotonic()
        deleted = await self._delete_batch(name, batch)
        self._counts.deleted[name] += deleted
        took = time.monotonic() - started
        if took > BATCH_SECONDS:
            self._batches[name] = max(min(SMALLEST_BATCH, self._batch_size), batch // 2)
        elif took < BATCH_SECONDS / 4 and deleted == batch:
            self._batches[name] = min(self._batch_size, batch * 2)
        if deleted < batch:  # this table is done
            self._table += 1
            if self._table == len(TABLES):
                self._finish()

    def _finish(self) -> None:
        self._table = None
        self._next_pass = self._clock() + self._interval
        self.passes += 1
        self.last = self._counts
        counts = self._counts.deleted
        log.log(
            logging.INFO if self._counts.total else logging.DEBUG,
            "retention (%d days): deleted %d activations and refusals, %d audit rows, "
            "%d clients, %d windows from before %s in %.1f s",
            self.days,
            counts["activations"],
            counts["audit_events"],
            counts["clients"],
            counts["windows"],
            self._cutoff.isoformat(timespec="seconds"),
            self._clock() - self._started,
        )

    # ------------------------------------------------------------------ one batch per table

    async def _delete_batch(self, name: str, limit: int) -> int:
        self._limit = limit
        async with self._store._write() as conn:
            match name:
                case "activations":
                    return await self._activations(conn)
                case "audit_events":
                    query = select(audit_events.c.id).where(audit_events.c.time < self._cutoff)
                    order = (audit_events.c.time, audit_events.c.id)
                    return await self._ids(conn, audit_events, query.order_by(*order))
                case "clients":
                    return await self._clients(conn)
                case _:
                    query = select(windows.c.id).where(
                        windows.c.expires_at < self._window_cutoff,
                        or_(
                            windows.c.consumed_at.is_(None),
                            windows.c.consumed_at < self._window_cutoff,
                        ),
                    )
                    return await self._ids(conn, windows, query.order_by(windows.c.expires_at))

    def _limited(self, query: Select[Any]) -> Select[Any]:
        """The oldest rows first, and on PostgreSQL only rows no other node is deleting."""
        query = query.limit(self._limit)
        if self._store.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        return query

    async def _ids(self, conn: AsyncConnection, table: Any, query: Select[Any]) -> int:
        ids = [row[0] for row in await conn.execute(self._limited(query))]
        if ids:
            await conn.execute(delete(table).where(table.c.id.in_(ids)))
        return len(ids)

    async def _activations(self, conn: AsyncConnection) -> int:
        query = (
            select(activations.c.id, activations.c.result)
            .where(activations.c.time < self._cutoff)
            .order_by(activations.c.time, activations.c.id)
        )
        rows = list(await conn.execute(self._limited(query)))
        if not rows:
            return 0
        await conn.execute(delete(activations).where(activations.c.id.in_([r.id for r in rows])))
        # Lifetime counters stay as they are; listings subtract what retention deleted.
        pruned = Counter(f"pruned:result:{r.result}" for r in rows)
        pruned["pruned:activations"] = len(rows)
        await self._store._add_counts(
            conn,
            counters,
            ["name"],
            "value",
            [{"name": k, "value": v} for k, v in sorted(pruned.items())],
        )
        return len(rows)

    async def _clients(self, conn: AsyncConnection) -> int:
        # Not seen within the retention: every request of theirs is already deleted, and a
        # client row holds the same personal data (machine name, address).
        query = (
            select(clients.c.cmid)
            .where(clients.c.last_seen < self._cutoff)
            .order_by(clients.c.last_seen, clients.c.cmid)
        )
        cmids = [row[0] for row in await conn.execute(self._limited(query))]
        if not cmids:
            return 0
        await conn.execute(delete(clients).where(clients.c.cmid.in_(cmids)))
        await self._store._add_counts(
            conn, counters, ["name"], "value", [{"name": "clients", "value": -len(cmids)}]
        )
        return len(cmids)
