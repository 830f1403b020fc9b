"""Writing one batch of activation records: the store's only hot path, kept at driver level.

SQLAlchemy's per-row parameter processing cost about as much CPU as SQLite's own work, on the
KMS host's core (127 → 70 µs a record without it), so rows are converted once here and sent
as they are: on SQLite by plain sqlite3 calls, the whole batch on the connection's thread
(the activation rows stepped from C where it is built: sqlite_rows.py); on PostgreSQL one
unnest() statement per table (postgres_batch.py).
Statements are built from the column constants (activation_fold.py, here) and schema.py's
types, never from input (hence the S608 waivers), so the SQL cannot drift from the tables.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from itertools import chain, compress, repeat
from operator import eq, getitem, itemgetter
from typing import Any, Protocol

from sqlalchemy import Table
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from kmsgate.store.activation_fold import (
    ACTIVATED,
    ACTIVATION_COLUMNS,
    CLIENT_COLUMNS,
    DRAFT_FOLD,
    DRAFT_FOLD_BUILD,
    RAW_IDS,
    RAW_TIME,
    SQLITE_RAW_VALUES,
    SQLITE_VALUES,
    DriverValues,
    FoldedBatch,
    converted_rows,
    sqlite_months,
)
from kmsgate.store.schema import (
    activation_hours,
    activations,
    clients,
    counters,
    machine_months,
    product_counts,
)
from kmsgate.store.sqlite_rows import RowStatement, describe, row_statement, rows_in_c

# How the C statement binds a raw activation row: its time and ids converted to text.
RAW_KINDS = "".join(
    "t" if index == RAW_TIME else "h" if index in RAW_IDS else "v"
    for index in range(len(ACTIVATION_COLUMNS))
)
# What a SQLite renewal compares with the stored client before an UPDATE names a column:
# machine_name and sku_name are indexed (every indexed column named costs an index rewrite),
# and naming any of the three runs the search trigger (a renewal of 2 000 machines: 5.0 →
# 3.6 µs an UPDATE without it). SELECT_STORED reads them in this order.
COMPARED_COLUMNS = ("machine_name", "sku_name", "last_address")
SELECT_STORED = (
    "SELECT cmid, machine_name, sku_name, last_address, first_seen, last_seen FROM clients"
    " WHERE cmid IN"
)
# SQLite bounds host parameters per statement (32 766 since 3.32); stay far below.
SQLITE_IN_CHUNK = 500
# Activation rows go in statements of this many rows (11 parameters each): one step and one
# release of the GIL per statement rather than per row; and to the connection's thread in
# parts of as many.
SQLITE_ROWS_PER_INSERT = 250
# Rows a statement stepped from C takes (sqlite_rows.py): prepared afresh for every batch,
# a statement costs about 19 000 instructions a row it names, so fewer than the sqlite3
# module's (whose statement cache keeps its own); a step costs about 8 000, so not one.
SQLITE_ROWS_PER_C_STEP = 25

# Client columns that follow the newest request (by request time, not by arrival).
LATEST_COLUMNS = (
    "machine_name",
    "application_id",
    "sku_id",
    "sku_name",
    "kms_id",
    "license_status",
    "last_seen",
    "last_epid",
    "last_address",
    "last_protocol",
)
# (column, its index in a client row, its index in COMPARED_COLUMNS or None), and the
# positions _changes reads: indexing a row beats a dict of it per client.
_LATEST = tuple(
    (
        column,
        CLIENT_COLUMNS.index(column),
        COMPARED_COLUMNS.index(column) if column in COMPARED_COLUMNS else None,
    )
    for column in LATEST_COLUMNS
)
_FIRST_SEEN, _LAST_SEEN, _REQUEST_COUNT = map(
    CLIENT_COLUMNS.index, ("first_seen", "last_seen", "request_count")
)


def describe_sqlite_writer() -> str:
    """How the SQLite writer binds and folds activation rows here, for the start-up log."""
    if DRAFT_FOLD is None:
        folded = f"in Python ({DRAFT_FOLD_BUILD})"
    elif rows_in_c():
        folded = f"in C ({DRAFT_FOLD_BUILD})"
    else:  # the C fold makes raw rows, which only the C binding takes
        folded = "in Python (rows not bound from C)"
    return f"activation rows bound {describe()}, folded {folded}"


class BatchWriter(Protocol):
    """Writes a folded batch (activation rows, clients, counters) in the caller's transaction."""

    driver: DriverValues  # what fold() must turn times and UUIDs into for this driver

    async def write(self, conn: AsyncConnection, batch: FoldedBatch) -> None:
        """Write the batch's rows and add it to the counters."""
        ...


def _qmarks(count: int) -> str:
    return ", ".join("?" * count)


def _sqlite_insert(table: Table, names: Sequence[str], rows: int = 1) -> str:
    columns, marks = ", ".join(names), _qmarks(len(names))
    values = ", ".join([f"({marks})"] * rows)
    return f"INSERT INTO {table.name} ({columns}) VALUES {values}"  # noqa: S608


def _sqlite_add(table: Table, keys: Sequence[str], value: str) -> str:
    """`value += n` for the row of `keys`, inserted when missing (counts.add_counts' SQL)."""
    names = [*keys, value]
    return (
        f"{_sqlite_insert(table, names)} ON CONFLICT ({', '.join(keys)}) "
        f"DO UPDATE SET {value} = {table.name}.{value} + excluded.{value}"
    )


def _sqlite_hour(hour: datetime) -> str:
    """An hour bucket as UtcDateTime's SQLite text."""
    return hour.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


# A served row's fields (ACTIVATION_COLUMNS order) that _machine_months reads.
_TIME, _CMID, _SKU_ID, _SKU_NAME, _RESULT = map(itemgetter, (0, 1, 4, 5, 8))
_MONTH = slice(0, 7)  # "YYYY-MM" of UtcDateTime's SQLite text


def _machine_months(
    rows: Sequence[tuple[Any, ...]], *, raw: bool = False
) -> list[tuple[str, str, str, str]]:
    """The licence report's (month, SKU id, CMID, SKU name) rows of a batch's served requests:
    each once, with the SKU name of its first request (as the row trigger of migration 0007,
    which SQLite no longer runs, kept them). `raw`: rows of SQLITE_RAW_VALUES.

    Column by column in C-level loops rather than a Python loop over the rows (fewer
    instructions a record, counted in docs/benchmarks.md).
    """
    served = list(compress(rows, map(eq, map(_RESULT, rows), repeat(ACTIVATED))))
    if raw:
        times = list(map(_TIME, served))
        earliest, latest = sqlite_months([min(times), max(times)]) if times else ("", "")
        # A batch within one month (nearly all): one month text, none made per record.
        months: Iterable[str] = (
            repeat(earliest, len(times)) if earliest == latest else sqlite_months(times)
        )
    else:
        months = map(getitem, map(_TIME, served), repeat(_MONTH))
    keys = list(zip(months, map(_SKU_ID, served), map(_CMID, served), strict=True))
    # Set in reverse, so that the earliest request's name is the one kept.
    first = dict(zip(reversed(keys), reversed(list(map(_SKU_NAME, served))), strict=True))
    return [
        (month, sku_id.hex(), cmid.hex(), name) if raw else (month, sku_id, cmid, name)
        for (month, sku_id, cmid), name in first.items()
        if sku_id is not None and cmid is not None
    ]


def _insert_stepped(
    statement: RowStatement, rows: list[tuple[Any, ...]], db: sqlite3.Connection
) -> None:
    statement.insert(rows)


class SqliteBatchWriter:
    """A batch in a few calls on the connection's own thread, each a run of plain sqlite3.

    aiosqlite runs each statement on its connection's thread and wakes the event loop for
    each step of it (cursor, execute, close); a batch is some twenty statements, and those
    round trips cost the serving core about 1.5 µs a record (docs/benchmarks.md). So the
    batch goes over in parts of SQLITE_ROWS_PER_INSERT rows, inside the transaction the caller
    began (BEGIN IMMEDIATE): parts, not one call, so that the loop runs between them (one
    call of 5 ms on a shared core put a millisecond on the answers' p99). The write lock
    also makes read-then-write exact, which lets a renewal update only the columns that
    change: every indexed column named in an UPDATE costs an index rewrite in SQLite.
    """

    def __init__(self) -> None:
        # Rows are bound from C where it is built: the drafts' times and ids are turned
        # into text there too, without a Python string each (raw rows, activation_fold.py).
        self.driver = SQLITE_RAW_VALUES if rows_in_c() else SQLITE_VALUES
        self._insert_activations = _sqlite_insert(activations, ACTIVATION_COLUMNS)
        self._insert_many_activations = _sqlite_insert(
            activations, ACTIVATION_COLUMNS, SQLITE_ROWS_PER_INSERT
        )
        self._insert_c_step = _sqlite_insert(
            activations, ACTIVATION_COLUMNS, SQLITE_ROWS_PER_C_STEP
        )
        self._insert_clients = _sqlite_insert(clients, CLIENT_COLUMNS)
        self._add_counter = _sqlite_add(counters, ["name"], "value")
        self._add_hour = _sqlite_add(activation_hours, ["hour", "node"], "count")
        self._add_product = _sqlite_add(product_counts, ["family", "sku_name"], "count")
        columns = ("month", "sku_id", "cmid", "sku_name")
        self._add_machine_months = _sqlite_insert(machine_months, columns).replace(
            "INSERT", "INSERT OR IGNORE", 1
        )
        self._updates: dict[tuple[str, ...], str] = {}

    async def write(self, conn: AsyncConnection, batch: FoldedBatch) -> None:
        """Run the batch's parts on the aiosqlite connection's thread; driver errors come
        back as SQLAlchemy's (an OperationalError still marks the connection for discarding)."""
        fairy = await conn.get_raw_connection()
        # aiosqlite's Connection: _execute runs a function on its thread, where _conn is
        # the sqlite3 connection (private names, stable since aiosqlite 0.17; the store
        # tests fail at once if they change).
        worker: Any = fairy.driver_connection
        statement: RowStatement | None = None
        try:
            if batch.driver.raw_rows and len(batch.activation_rows) >= SQLITE_ROWS_PER_C_STEP:
                statement = await worker._execute(self._prepare, worker._conn)
            for part in self.parts(batch, statement):
                await worker._execute(part, worker._conn)
        except sqlite3.Error as exc:
            raise sa_exc.DBAPIError.instance(
                "record batch", None, exc, sqlite3.Error, dialect=conn.dialect
            ) from exc
        finally:
            if statement is not None:
                # On its thread, before the connection goes back to the pool.
                await worker._execute(statement.close)

    def _prepare(self, db: sqlite3.Connection) -> RowStatement | None:
        return row_statement(db, self._insert_c_step, SQLITE_ROWS_PER_C_STEP, RAW_KINDS)

    def parts(
        self, batch: FoldedBatch, statement: RowStatement | None = None
    ) -> Iterator[Callable[[sqlite3.Connection], None]]:
        """The batch's writes in order: the activation rows a part at a time (stepped from C
        when `statement` is given), then the rest of them, the clients and counters."""
        rows, raw = batch.activation_rows, batch.driver.raw_rows
        if statement is None and raw:
            rows, raw = converted_rows(rows, SQLITE_VALUES), False
        step = SQLITE_ROWS_PER_INSERT if statement is None else statement.rows
        whole = len(rows) - len(rows) % step
        for start in range(0, whole, SQLITE_ROWS_PER_INSERT):
            part = rows[start : min(start + SQLITE_ROWS_PER_INSERT, whole)]
            if statement is None:
                yield functools.partial(self._insert_whole, part)
            else:
                yield functools.partial(_insert_stepped, statement, part)
        yield functools.partial(self._write_rest, batch, rows[whole:], raw)

    def _insert_whole(self, rows: Sequence[tuple[Any, ...]], db: sqlite3.Connection) -> None:
        db.execute(self._insert_many_activations, tuple(chain.from_iterable(rows)))

    def _write_rest(
        self,
        batch: FoldedBatch,
        rows: Sequence[tuple[Any, ...]],
        raw: bool,
        db: sqlite3.Connection,
    ) -> None:
        """The remaining activation rows (`raw`: as SQLITE_RAW_VALUES left them), new and
        known clients, the counts."""
        if raw:
            rows = converted_rows(rows, SQLITE_VALUES)
        if rows:
            db.executemany(self._insert_activations, rows)
        new = self._write_clients(db, batch) if batch.clients else 0
        deltas = batch.counters | ({"clients": new} if new else {})
        db.executemany(self._add_counter, sorted(deltas.items()))
        db.executemany(
            self._add_hour,
            [(_sqlite_hour(h), n, c) for (h, n), c in sorted(batch.hours.items())],
        )
        db.executemany(
            self._add_product, [(f, s, c) for (f, s), c in sorted(batch.products.items())]
        )
        try:
            months = (
                _machine_months(batch.activation_rows, raw=batch.driver.raw_rows)
                if batch.machine_months is None
                else [(*key, name) for key, name in batch.machine_months.items()]
            )
            db.executemany(self._add_machine_months, months)
        except sqlite3.OperationalError as exc:
            # A schema from before migration 0007 (a node run with --no-db-upgrade): it has
            # no report to fill, and the row trigger of 0007 to 0010 does it where it runs.
            if "no such table: machine_months" not in str(exc):
                raise

    def _write_clients(self, db: sqlite3.Connection, batch: FoldedBatch) -> int:
        """Insert new clients, update known ones; return how many were new."""
        rows = batch.client_rows()
        stored = self._stored(db, [row[0] for row in rows])
        fresh = [row for row in rows if row[0] not in stored]
        if fresh:
            db.executemany(self._insert_clients, fresh)
        groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for row in rows:
            known = stored.get(row[0])
            if known is not None:
                names, values = self._changes(row, known)
                groups.setdefault(names, []).append((*values, row[0]))
        for names, params in groups.items():
            db.executemany(self._update_sql(names), params)
        return len(fresh)

    @staticmethod
    def _stored(db: sqlite3.Connection, keys: Sequence[str]) -> dict[str, tuple[str, ...]]:
        """(the COMPARED_COLUMNS, first_seen, last_seen) of the batch's known clients."""
        found: dict[str, tuple[str, ...]] = {}
        for start in range(0, len(keys), SQLITE_IN_CHUNK):
            chunk = keys[start : start + SQLITE_IN_CHUNK]
            query = f"{SELECT_STORED} ({_qmarks(len(chunk))})"
            for cmid, *stored in db.execute(query, tuple(chunk)):
                found[cmid] = tuple(stored)
        return found

    @staticmethod
    def _changes(row: tuple[Any, ...], known: tuple[str, ...]) -> tuple[tuple[str, ...], list[Any]]:
        """The SET columns and values that bring a stored client up to this batch."""
        *same, first, last = known
        names: list[str] = []
        values: list[Any] = []
        # Text comparison is time order: both sides use the one fixed-width format.
        if row[_LAST_SEEN] >= last:
            for column, index, compared in _LATEST:
                value = row[index]
                if compared is not None and value == same[compared]:
                    continue
                names.append(column)
                values.append(value)
        if row[_FIRST_SEEN] < first:
            names.append("first_seen")
            values.append(row[_FIRST_SEEN])
        names.append("request_count")
        values.append(row[_REQUEST_COUNT])
        return tuple(names), values

    def _update_sql(self, names: tuple[str, ...]) -> str:
        sql = self._updates.get(names)
        if sql is None:
            sets = ", ".join(
                "request_count = request_count + ?" if n == "request_count" else f"{n} = ?"
                for n in names
            )
            sql = f"UPDATE clients SET {sets} WHERE cmid = ?"  # noqa: S608
            self._updates[names] = sql
        return sql
