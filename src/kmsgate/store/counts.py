"""Counter upserts: `value += n` rows, the O(1) totals the dashboard and listings read."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from kmsgate.store.activation_fold import FoldedBatch
from kmsgate.store.engine import Dialect
from kmsgate.store.schema import activation_hours, counters, product_counts

if TYPE_CHECKING:
    from sqlalchemy.dialects import postgresql


def dialect_insert(dialect: Dialect, table: Any) -> postgresql.Insert | sqlite.Insert:
    """The dialect's INSERT, which has on_conflict_do_update()."""
    if dialect == "postgresql":
        # Imported on first use: the PostgreSQL dialect costs a SQLite node 2 MiB.
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    return sqlite.insert(table)


async def add_counts(
    conn: AsyncConnection,
    dialect: Dialect,
    table: Any,
    keys: Sequence[str],
    value: str,
    rows: Sequence[Mapping[str, Any]],
) -> None:
    """Upsert `value += n` rows; callers pass them sorted so nodes lock in one order."""
    if not rows:
        return
    ins = dialect_insert(dialect, table)
    stmt = ins.on_conflict_do_update(
        index_elements=[table.c[k] for k in keys],
        set_={value: table.c[value] + ins.excluded[value]},
    )
    await conn.execute(stmt, list(rows))


async def add_batch_counts(
    conn: AsyncConnection, dialect: Dialect, batch: FoldedBatch, new_clients: int
) -> None:
    """Add a written batch to the counters, hourly buckets and product counts."""
    deltas = batch.counters | ({"clients": new_clients} if new_clients else {})
    await add_counts(
        conn,
        dialect,
        counters,
        ["name"],
        "value",
        [{"name": k, "value": v} for k, v in sorted(deltas.items())],
    )
    await add_counts(
        conn,
        dialect,
        activation_hours,
        ["hour", "node"],
        "count",
        [{"hour": h, "node": n, "count": c} for (h, n), c in sorted(batch.hours.items())],
    )
    await add_counts(
        conn,
        dialect,
        product_counts,
        ["family", "sku_name"],
        "count",
        [{"family": f, "sku_name": s, "count": c} for (f, s), c in sorted(batch.products.items())],
    )
