"""Writing one batch of activation records on PostgreSQL: one unnest() statement per table.

asyncpg encodes whole columns as arrays in binary; clients are upserted with the
newest-request-wins rules in SQL, since several nodes may write the same CMID at once.
Statements are built from the column constants and schema.py's types, never from input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import BigInteger, Integer, String, Table, Uuid
from sqlalchemy.ext.asyncio import AsyncConnection

from kmsgate.store.activation_batch import LATEST_COLUMNS
from kmsgate.store.activation_fold import (
    ACTIVATION_COLUMNS,
    CLIENT_COLUMNS,
    NATIVE_VALUES,
    FoldedBatch,
)
from kmsgate.store.counts import add_batch_counts
from kmsgate.store.schema import UtcDateTime, activations, clients


def _pg_array_type(table: Table, name: str) -> str:
    column_type = table.c[name].type
    if isinstance(column_type, UtcDateTime):
        return "timestamptz[]"
    if isinstance(column_type, Uuid):
        return "uuid[]"
    if isinstance(column_type, BigInteger):
        return "bigint[]"
    if isinstance(column_type, Integer):
        return "integer[]"
    if isinstance(column_type, String):
        return "text[]"
    raise TypeError(f"no PostgreSQL array type for {table.name}.{name} ({column_type!r})")


def _pg_unnest(table: Table, names: Sequence[str]) -> str:
    """INSERT ... SELECT FROM unnest($1::t1[], ...): a whole batch as one parameter set."""
    arrays = ", ".join(
        f"${i}::{_pg_array_type(table, name)}" for i, name in enumerate(names, start=1)
    )
    columns = ", ".join(names)
    return f"INSERT INTO {table.name} ({columns}) SELECT * FROM unnest({arrays})"  # noqa: S608


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> tuple[list[Any], ...]:
    """Rows to one list per column, the shape unnest() takes."""
    if not rows:
        return tuple([] for _ in range(width))
    return tuple(list(column) for column in zip(*rows, strict=True))


class PostgresBatchWriter:
    """One statement per table with column arrays: asyncpg encodes them in binary, fast.

    Clients are upserted (several nodes may write the same CMID concurrently) with the
    newest-request-wins rules in SQL; a row whose count equals this batch's is new.
    """

    def __init__(self) -> None:
        self.driver = NATIVE_VALUES
        self._insert_activations = _pg_unnest(activations, ACTIVATION_COLUMNS)
        newer = "excluded.last_seen >= clients.last_seen"
        sets = [
            f"{c} = CASE WHEN {newer} THEN excluded.{c} ELSE clients.{c} END"
            for c in LATEST_COLUMNS
        ]
        # Another node may write an older request later: keep the earliest first_seen.
        sets.append("first_seen = LEAST(clients.first_seen, excluded.first_seen)")
        sets.append("request_count = clients.request_count + excluded.request_count")
        self._upsert_clients = (
            f"{_pg_unnest(clients, CLIENT_COLUMNS)} "
            f"ON CONFLICT (cmid) DO UPDATE SET {', '.join(sets)} "
            "RETURNING cmid, request_count"
        )

    async def write(self, conn: AsyncConnection, batch: FoldedBatch) -> None:
        """Insert activations, upsert clients, add the counts."""
        await conn.exec_driver_sql(
            self._insert_activations,
            _columns(batch.activation_rows, len(ACTIVATION_COLUMNS)),
        )
        new = await self._upsert_clients_of(conn, batch) if batch.clients else 0
        await add_batch_counts(conn, "postgresql", batch, new)

    async def _upsert_clients_of(self, conn: AsyncConnection, batch: FoldedBatch) -> int:
        """Upsert the batch's clients; return how many were new."""
        rows = batch.client_rows()
        returned = await conn.exec_driver_sql(
            self._upsert_clients, _columns(rows, len(CLIENT_COLUMNS))
        )
        # A fresh row holds exactly this batch's count; an updated one holds more.
        counts = batch.clients
        return sum(
            1 for row in returned.mappings() if row["request_count"] == counts[row["cmid"]].count
        )
