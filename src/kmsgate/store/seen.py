"""Repository of the machines seen lately per client counter (the genuine client count)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, select

from kmsgate.store.database import Store
from kmsgate.store.schema import seen_machines

SeenRow = tuple[str, uuid.UUID, datetime]


class SeenMachines:
    """Shares the machines each node has seen through its store (SQLite or PostgreSQL)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def save(self, rows: Sequence[SeenRow]) -> None:
        """Upsert (counter, cmid, last_seen); a later time wins, an earlier one is ignored."""
        if not rows:
            return
        # Sorted, so that nodes writing at once lock rows in one order (no deadlock).
        values = [{"counter": c, "cmid": m, "last_seen": t} for c, m, t in sorted(set(rows))]
        ins = self._store._insert(seen_machines)
        later = (func.greatest if self._store.dialect == "postgresql" else func.max)(
            seen_machines.c.last_seen, ins.excluded.last_seen
        )
        stmt = ins.on_conflict_do_update(
            index_elements=[seen_machines.c.counter, seen_machines.c.cmid],
            set_={"last_seen": later},
        )
        async with self._store._write() as conn:
            await conn.execute(stmt, values)

    async def recent(self, since: datetime, per_counter: int) -> list[SeenRow]:
        """The newest `per_counter` machines of each counter seen at or after `since`."""
        ranked = select(
            seen_machines.c.counter,
            seen_machines.c.cmid,
            seen_machines.c.last_seen,
            func.row_number()
            .over(
                partition_by=seen_machines.c.counter,
                order_by=seen_machines.c.last_seen.desc(),
            )
            .label("rank"),
        ).where(seen_machines.c.last_seen >= since)
        inner = ranked.subquery()
        query = select(inner.c.counter, inner.c.cmid, inner.c.last_seen).where(
            inner.c.rank <= per_counter
        )
        async with self._store._read() as conn:
            result = await conn.execute(query)
            return [(row.counter, row.cmid, row.last_seen) for row in result]

    async def after(self, since: datetime, limit: int) -> list[SeenRow]:
        """Machines seen after `since`, oldest first (what other nodes wrote lately)."""
        query = (
            select(seen_machines.c.counter, seen_machines.c.cmid, seen_machines.c.last_seen)
            .where(seen_machines.c.last_seen > since)
            .order_by(seen_machines.c.last_seen)
            .limit(limit)
        )
        async with self._store._read() as conn:
            result = await conn.execute(query)
            return [(row.counter, row.cmid, row.last_seen) for row in result]

    async def prune(self, before: datetime) -> int:
        """Forget machines not seen since `before`; returns how many rows went."""
        async with self._store._write() as conn:
            result = await conn.execute(
                delete(seen_machines).where(seen_machines.c.last_seen < before)
            )
            return result.rowcount or 0
