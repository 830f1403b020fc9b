"""The Store: async repository functions over SQLite (one node) or PostgreSQL (several nodes)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar, get_args

from sqlalchemy import (
    ColumnElement,
    Row,
    Select,
    case,
    delete,
    event,
    func,
    insert,
    literal,
    select,
    tuple_,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from kmsgate.store import cursor as cursors
from kmsgate.store.activation_batch import (
    BatchWriter,
    FoldedBatch,
    PostgresBatchWriter,
    SqliteBatchWriter,
    aware,
    fold,
    hour_of,
)
from kmsgate.store.engine import (
    WRITE_OPTION,
    FileId,
    file_id,
    make_engine,
    masked,
    recreate_sqlite_file,
    sidecar_ids,
    sqlite_path,
    translated,
)
from kmsgate.store.errors import (
    InvalidCursor,
    StoreError,
    StoreUnavailable,
    UserExists,
    UserNotFound,
)
from kmsgate.store.records import (
    ActivationRecord,
    ActivationRow,
    ClientRow,
    Page,
    Stats,
    User,
)
from kmsgate.store.schema import (
    activation_hours,
    activations,
    clients,
    counters,
    product_counts,
    users,
)
from kmsgate.store.search import ClientSearch, has_index, sqlite_search

log = logging.getLogger("kmsgate.store")

Dialect = Literal["sqlite", "postgresql"]
ClientSort = Literal["last_seen", "first_seen", "machine_name", "sku_name", "request_count"]
CLIENT_SORTS: tuple[str, ...] = get_args(ClientSort)
MAX_LIMIT = 1000
STATS_HOURS = 7 * 24
TOP_PRODUCTS = 20
# How often at most a SQLite file's identity is compared with the path's (one stat call).
FILE_CHECK_INTERVAL = 1.0
# A batch whose file was deleted while it was written is written again, this often at most.
REWRITES = 2
# The counter probe_write() bumps: a write that proves the store takes writes.
_PROBE_ROW = {"name": "store:write_probes", "value": 1}
T = TypeVar("T")


_Row = TypeVar("_Row", ClientRow, ActivationRow)


def _from_columns(cls: type[_Row], row: Row[Any]) -> _Row:
    """A records.py row from the selected columns named like its fields."""
    m = row._mapping
    return cls(**{f.name: m[f.name] for f in fields(cls)})


def _client_row(row: Row[Any]) -> ClientRow:
    return _from_columns(ClientRow, row)


def _activation_row(row: Row[Any]) -> ActivationRow:
    return _from_columns(ActivationRow, row)


def _user(row: Row[Any]) -> User:
    m = row._mapping
    return User(
        name=m["name"],
        password_hash=m["password_hash"],
        is_admin=bool(m["is_admin"]),
        created=m["created"],
        disabled=bool(m["disabled"]),
    )


# Cursor key codecs: JSON carries str/int; each sort column says how to read its value back.
def _time_to_key(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _time_from_key(value: object) -> datetime:
    if not isinstance(value, str):
        raise InvalidCursor("cursor time is not a string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidCursor("cursor time is malformed") from exc
    if parsed.tzinfo is None:
        raise InvalidCursor("cursor time has no offset")
    return parsed.astimezone(UTC)


def _uuid_from_key(value: object) -> uuid.UUID:
    if not isinstance(value, str):
        raise InvalidCursor("cursor id is not a string")
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise InvalidCursor("cursor id is malformed") from exc


def _int_from_key(value: object) -> int:
    # Bound to BIGINT so a tampered huge number is rejected here, not by the driver.
    if not isinstance(value, int) or not -(2**63) <= value < 2**63:
        raise InvalidCursor("cursor number is malformed")
    return value


def _str_from_key(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidCursor("cursor text is malformed")
    return value


_CLIENT_KEY_CODECS: dict[str, tuple[Callable[[Any], cursors.KeyValue], Callable[[object], Any]]] = {
    "last_seen": (_time_to_key, _time_from_key),
    "first_seen": (_time_to_key, _time_from_key),
    "machine_name": (str, _str_from_key),
    "sku_name": (str, _str_from_key),
    "request_count": (int, _int_from_key),
}


@dataclass(frozen=True, slots=True)
class _Keyset:
    """One listing's keyset: ordered columns, direction, cursor identity and key codecs."""

    listing: str
    columns: tuple[Any, ...]
    descending: bool
    order: str
    scope: str
    to_key: tuple[Callable[[Any], cursors.KeyValue], ...]
    from_key: tuple[Callable[[object], Any], ...]

    def decode(self, token: str) -> tuple[cursors.Cursor, tuple[Any, ...]]:
        cur = cursors.decode(
            token,
            listing=self.listing,
            order=self.order,
            scope=self.scope,
            key_len=len(self.columns),
        )
        values = tuple(parse(v) for parse, v in zip(self.from_key, cur.key, strict=True))
        return cur, values

    def token(self, direction: cursors.Direction, values: Sequence[Any]) -> str:
        key = tuple(fmt(v) for fmt, v in zip(self.to_key, values, strict=True))
        return cursors.encode(cursors.Cursor(self.listing, self.order, self.scope, direction, key))


class Store:
    """Repository functions over one database; every method is a short transaction."""

    def __init__(
        self,
        url: str,
        engine: AsyncEngine,
        *,
        clock: Callable[[], float] = time.monotonic,
        recreate: bool = True,
    ) -> None:
        """Use Store.open(); this wraps an engine made by make_engine()."""
        self._engine = engine
        name = engine.dialect.name
        if name not in ("sqlite", "postgresql"):
            raise StoreError(f"unsupported dialect {name}")
        self.dialect: Dialect = "sqlite" if name == "sqlite" else "postgresql"
        self._batch_writer: BatchWriter = (
            SqliteBatchWriter() if self.dialect == "sqlite" else PostgresBatchWriter()
        )
        self.url: str = masked(url)
        # Whether SQLite search has its trigram index; looked up at the first search.
        self._search_indexed: bool | None = None
        # A SQLite file deleted or replaced while open keeps taking writes that nobody will
        # ever read: its identity at connect time is compared with the path's (issue 11, S2).
        self._path = sqlite_path(url) if self.dialect == "sqlite" else None
        self._clock = clock
        self._recreate = recreate  # may create a file that was missing from the start
        self._file: FileId | None = None
        self._sidecars: set[FileId] = set()  # the -wal and -shm the connections met
        self._file_suspect = False  # a connection met another file, or a recovery failed
        self._next_file_check = 0.0
        self._recovering = asyncio.Lock()
        self.recreated = 0  # files found deleted or replaced, and reopened
        if self._path is not None:
            event.listen(engine.sync_engine, "connect", self._on_connect)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        upgrade: bool = True,
        recreate: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Store:
        """Connect (creating a SQLite file and its folder); upgrade=True migrates to head first.

        With upgrade=False nothing is contacted or created yet, so a node can start while its
        database is down: the RecordWriter queues until it is back. A SQLite file deleted
        while in use is always created anew; one missing from the start only with recreate
        (default: upgrade), else using the Store raises StoreUnavailable.
        """
        engine = make_engine(url, create=upgrade)
        store = cls(url, engine, clock=clock, recreate=upgrade if recreate is None else recreate)
        if upgrade:
            # Alembic is imported only here: the writer process never migrates.
            from kmsgate.store.migrate import run_upgrade

            try:
                with translated():
                    await run_upgrade(engine)
            except BaseException:
                await engine.dispose()
                raise
        return store

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    __str__ = __repr__

    @property
    def engine(self) -> AsyncEngine:
        """The underlying engine, for migrations and benchmarks (not for SQL elsewhere)."""
        return self._engine

    async def close(self) -> None:
        """Close every pooled connection."""
        await self._engine.dispose()

    async def reconnect(self) -> None:
        """Drop every pooled connection: the next use connects afresh.

        A SQLite connection opened while the file was read-only stays read-only after the
        file is writable again, and a PostgreSQL connection may be half dead.
        """
        await self._engine.dispose()

    # ---------------------------------------------------------------- the SQLite file

    def _on_connect(self, _dbapi_connection: Any, _record: Any) -> None:
        if self._path is None:
            return
        try:
            current = file_id(self._path)
        except OSError:
            return
        if self._file is None:
            self._file = current
        elif current != self._file:
            self._file_suspect = True  # the pool now holds connections to two files
            return
        # Remembered per Store, not looked up per process: another Store of this process
        # may already use a new file's sidecars, which are not the lost file's.
        self._sidecars |= sidecar_ids(self._path)

    def _moved(self) -> str | None:
        """'deleted' or 'replaced' when the path no longer names the file we write to;
        'missing' when there never was one and this Store may not create it."""
        if self._path is None:
            return None
        try:
            current = file_id(self._path)
        except OSError:
            return None  # the folder cannot be searched: the next statement will say why
        if current is None:
            return "deleted" if self._file is not None or self._recreate else "missing"
        if self._file is not None and current != self._file:
            return "replaced"
        return "replaced" if self._file_suspect else None

    async def _check_file(self) -> None:
        """Reopen the database if its file was deleted or replaced (a stat, once a second)."""
        if self._path is None:
            return
        now = self._clock()
        if now < self._next_file_check and not self._file_suspect and self._file is not None:
            return
        self._next_file_check = now + FILE_CHECK_INTERVAL
        match self._moved():
            case "missing":
                # Said here: SQLite's own "unable to open database file" names no file.
                raise StoreUnavailable(f"there is no database file {self._path}")
            case None:
                if self._file is not None:
                    self._sidecars |= sidecar_ids(self._path)
            case _:
                await self._recover()

    async def _recover(self) -> None:
        """Close the connections to the lost file, recreate it if missing, migrate, reopen.

        Records that reached the lost file before this are gone with it; the writer's batch
        in flight is written again (see record_activations).
        """
        assert self._path is not None
        async with self._recovering:
            why = self._moved()
            if why is None:
                return  # another task of this process recovered meanwhile
            log.warning("database file %s was %s while in use: reopening it", self._path, why)
            self._file_suspect = True  # until this succeeds: the next check tries again
            stale = self._sidecars
            await self._engine.dispose()
            self._file, self._sidecars = None, set()
            created = await asyncio.to_thread(recreate_sqlite_file, self._path, stale)
            # Alembic is imported only now: the writer process does not migrate otherwise.
            from kmsgate.store.migrate import run_upgrade

            with translated():
                await run_upgrade(self._engine)
            self._file_suspect = False
            self._search_indexed = None
            self.recreated += 1
            log.warning(
                "database file %s %s; writing there from now on",
                self._path,
                "created anew with an empty schema" if created else "reopened",
            )

    async def optimize(self) -> None:
        """Refresh the query planner's statistics (VACUUM ANALYZE / ANALYZE) after bulk loads."""
        with translated():
            async with self._engine.connect() as conn:
                # VACUUM cannot run inside a transaction block.
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                if self.dialect == "postgresql":
                    await conn.exec_driver_sql("VACUUM (ANALYZE)")
                else:
                    await conn.exec_driver_sql("ANALYZE")

    async def ping(self) -> None:
        """Round-trip to the database; StoreUnavailable when it does not answer."""
        async with self._read() as conn:
            await conn.execute(select(1))

    async def probe_write(self) -> None:
        """Run a write transaction that changes nothing; StoreUnavailable if none can run.

        Tells a record the database rejects from a database that takes no writes at all
        (read-only file, full disk), whatever error class the driver chose for the latter.
        """
        try:
            async with self._write() as conn:
                # A real row change: a no-op statement may pass where a write cannot.
                await self._add_counts(conn, counters, ["name"], "value", [_PROBE_ROW])
        except StoreUnavailable:
            raise
        except Exception as exc:  # any failure here means: not writable
            raise StoreUnavailable(f"the store takes no writes: {exc}"[:300]) from exc

    # ---------------------------------------------------------------- plumbing

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        with translated():
            await self._check_file()
            async with self._engine.connect() as conn:
                try:
                    yield conn
                except sa_exc.OperationalError:
                    await self._discard(conn)
                    raise

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        with translated():
            await self._check_file()
            async with self._engine.connect() as conn:
                if self.dialect == "sqlite":
                    await conn.execution_options(**{WRITE_OPTION: True})
                try:
                    async with conn.begin():
                        yield conn
                except sa_exc.OperationalError:
                    await self._discard(conn)
                    raise

    async def _discard(self, conn: AsyncConnection) -> None:
        """Keep a failed SQLite connection out of the pool: it may have been opened read-only
        (SQLite silently falls back to that) and would stay so after the file is writable."""
        if self.dialect == "sqlite":
            await conn.invalidate()

    def _insert(self, table: Any) -> postgresql.Insert | sqlite.Insert:
        return postgresql.insert(table) if self.dialect == "postgresql" else sqlite.insert(table)

    async def _add_counts(
        self,
        conn: AsyncConnection,
        table: Any,
        keys: Sequence[str],
        value: str,
        rows: Sequence[Mapping[str, Any]],
    ) -> None:
        """Upsert `value += n` rows; callers pass them sorted so nodes lock in one order."""
        if not rows:
            return
        ins = self._insert(table)
        stmt = ins.on_conflict_do_update(
            index_elements=[table.c[k] for k in keys],
            set_={value: table.c[value] + ins.excluded[value]},
        )
        await conn.execute(stmt, list(rows))

    # ---------------------------------------------------------------- activations

    async def record_activations(self, records: Sequence[ActivationRecord]) -> None:
        """Store a batch in one transaction: activation rows, client rows, counters."""
        if not records:
            return
        batch = fold(records, self._batch_writer.driver)
        for attempt in range(REWRITES + 1):
            await self._write_batch(batch)
            # Committed into a file deleted meanwhile? Nobody would ever read it: once a new
            # file is in place, write the batch again. (A file still at its path after the
            # commit held the batch when it was deleted later, along with the rest.)
            if self._moved() is None:
                return
            if attempt < REWRITES:
                await self._recover()
        raise StoreUnavailable(f"database file {self._path} keeps disappearing")

    async def _write_batch(self, batch: FoldedBatch) -> None:
        async with self._write() as conn:
            new = await self._batch_writer.write(conn, batch)
            deltas = batch.counters | ({"clients": new} if new else {})
            await self._add_counts(
                conn,
                counters,
                ["name"],
                "value",
                [{"name": k, "value": v} for k, v in sorted(deltas.items())],
            )
            await self._add_counts(
                conn,
                activation_hours,
                ["hour", "node"],
                "count",
                [{"hour": h, "node": n, "count": c} for (h, n), c in sorted(batch.hours.items())],
            )
            await self._add_counts(
                conn,
                product_counts,
                ["family", "sku_name"],
                "count",
                [
                    {"family": f, "sku_name": s, "count": c}
                    for (f, s), c in sorted(batch.products.items())
                ],
            )

    # ---------------------------------------------------------------- paging

    async def _page(
        self,
        keyset: _Keyset,
        base: Select[Any],
        conditions: list[ColumnElement[bool]],
        cursor: str | None,
        limit: int,
        convert: Callable[[Row[Any]], T],
        total_query: Select[Any] | None,
        search: ClientSearch | None = None,
    ) -> Page[T]:
        """Run one keyset page; `total_query` (a cheap scalar, or None) reads the total."""
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_LIMIT}, got {limit}")
        backward = False
        where = list(conditions)
        boundary: tuple[Any, ...] | None = None
        if cursor is not None:
            cur, boundary = keyset.decode(cursor)
            backward = cur.direction == "prev"
        # A "prev" page scans the other way from the boundary, then is flipped back.
        scan_desc = keyset.descending != backward
        if boundary is not None:
            row = tuple_(*keyset.columns)
            # Typed binds: cursor values go through the column types (UTC text, UUID).
            bound = tuple_(
                *(
                    literal(value, type_=col.type)
                    for col, value in zip(keyset.columns, boundary, strict=True)
                )
            )
            where.append(row < bound if scan_desc else row > bound)
        order = [c.desc() if scan_desc else c.asc() for c in keyset.columns]
        total: int | None = None
        async with self._read() as conn:
            if search is not None and self.dialect == "sqlite":
                if self._search_indexed is None:
                    self._search_indexed = await has_index(conn)
                fetched = await sqlite_search(
                    conn,
                    keyset.columns,
                    where,
                    search,
                    scan_desc,
                    limit + 1,
                    indexed=self._search_indexed,
                )
            else:
                if search is not None:
                    where.append(search.condition(keyset.columns[0].table.c))
                stmt = base.where(*where).order_by(*order).limit(limit + 1)
                fetched = list(await conn.execute(stmt))
            if total_query is not None:
                total = int((await conn.execute(total_query)).scalar() or 0)
        more = len(fetched) > limit
        fetched = fetched[:limit]
        if backward:
            fetched.reverse()
        names = [c.key for c in keyset.columns]

        def key_of(row: Row[Any]) -> list[Any]:
            return [row._mapping[n] for n in names]

        items = [convert(r) for r in fetched]
        next_cursor: str | None
        prev_cursor: str | None
        if backward:
            prev_cursor = keyset.token("prev", key_of(fetched[0])) if more and fetched else None
            if fetched:
                next_cursor = keyset.token("next", key_of(fetched[-1]))
            else:
                assert boundary is not None
                next_cursor = keyset.token("next", boundary)
        else:
            next_cursor = keyset.token("next", key_of(fetched[-1])) if more and fetched else None
            if boundary is None:
                prev_cursor = None
            elif fetched:
                prev_cursor = keyset.token("prev", key_of(fetched[0]))
            else:
                prev_cursor = keyset.token("prev", boundary)
        return Page(items, next_cursor, prev_cursor, total)

    @staticmethod
    def _counter(name: str) -> Select[Any]:
        return select(counters.c.value).where(counters.c.name == name)

    @staticmethod
    def _retained(name: str) -> Select[Any]:
        """A lifetime counter less the rows --retention-days deleted of it ("pruned:" name)."""
        signed = case((counters.c.name == name, counters.c.value), else_=-counters.c.value)
        return select(func.coalesce(func.sum(signed), 0)).where(
            counters.c.name.in_((name, f"pruned:{name}"))
        )

    async def list_clients(
        self,
        *,
        search: str | None = None,
        sort: ClientSort = "last_seen",
        descending: bool = True,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[ClientRow]:
        """Clients in keyset pages; search matches name/SKU substring, address prefix, CMID."""
        if sort not in CLIENT_SORTS:
            raise ValueError(f"sort must be one of {', '.join(CLIENT_SORTS)}")
        term = (search or "").strip()
        to_key, from_key = _CLIENT_KEY_CODECS[sort]
        keyset = _Keyset(
            listing="clients",
            columns=(clients.c[sort], clients.c.cmid),
            descending=descending,
            order=f"{sort}:{'desc' if descending else 'asc'}",
            scope=cursors.scope_of(term),
            to_key=(to_key, str),
            from_key=(from_key, _uuid_from_key),
        )
        conditions: list[ColumnElement[bool]] = []
        search_for = None
        if term:
            try:
                # A GUID is a CMID lookup: one primary-key probe, no name scan.
                conditions.append(clients.c.cmid == uuid.UUID(term))
            except ValueError:
                search_for = ClientSearch(term, self.dialect)
        # Filtered totals would need a count(*) scan: only the unfiltered one is free.
        total_query = None if term else self._counter("clients")
        return await self._page(
            keyset,
            select(clients),
            conditions,
            cursor,
            limit,
            _client_row,
            total_query,
            search_for,
        )

    async def get_client(self, cmid: uuid.UUID) -> ClientRow | None:
        """One client by CMID."""
        async with self._read() as conn:
            row = (await conn.execute(select(clients).where(clients.c.cmid == cmid))).first()
        return None if row is None else _client_row(row)

    async def client_history(
        self, cmid: uuid.UUID, *, cursor: str | None = None, limit: int = 50
    ) -> Page[ActivationRow]:
        """One client's requests, newest first; total is its request count."""
        keyset = _Keyset(
            listing="history",
            columns=(activations.c.id,),
            descending=True,
            order="id:desc",
            scope=cursors.scope_of(str(cmid)),
            to_key=(int,),
            from_key=(_int_from_key,),
        )
        return await self._page(
            keyset,
            select(activations),
            [activations.c.cmid == cmid],
            cursor,
            limit,
            _activation_row,
            # Every stored request of a CMID was counted into its client row.
            select(clients.c.request_count).where(clients.c.cmid == cmid),
        )

    async def list_activations(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        result: str | None = None,
        node: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[ActivationRow]:
        """Requests newest first, filtered by time range [since, until), result and node."""
        conditions: list[ColumnElement[bool]] = []
        if since is not None:
            conditions.append(activations.c.time >= aware(since, "since"))
        if until is not None:
            conditions.append(activations.c.time < aware(until, "until"))
        if result is not None:
            conditions.append(activations.c.result == result)
        if node is not None:
            conditions.append(activations.c.node == node)
        keyset = _Keyset(
            listing="activations",
            columns=(activations.c.time, activations.c.id),
            descending=True,
            order="time:desc",
            scope=cursors.scope_of(
                since and _time_to_key(since), until and _time_to_key(until), result, node
            ),
            to_key=(_time_to_key, int),
            from_key=(_time_from_key, _int_from_key),
        )
        total_query = None
        if since is None and until is None and node is None:
            total_query = self._retained("activations" if result is None else f"result:{result}")
        return await self._page(
            keyset, select(activations), conditions, cursor, limit, _activation_row, total_query
        )

    # ---------------------------------------------------------------- stats

    async def stats(self, now: datetime) -> Stats:
        """Dashboard figures from counters and hourly buckets; never scans the big tables."""
        end = hour_of(aware(now, "now"))
        start = end - timedelta(hours=STATS_HOURS - 1)
        async with self._read() as conn:
            found = {
                name: int(value)
                for name, value in await conn.execute(select(counters.c.name, counters.c.value))
            }
            hourly = await conn.execute(
                select(activation_hours.c.hour, func.sum(activation_hours.c.count))
                .where(activation_hours.c.hour >= start, activation_hours.c.hour <= end)
                .group_by(activation_hours.c.hour)
            )
            per_hour_found = {hour_of(h): int(c) for h, c in hourly}
            products = await conn.execute(
                select(product_counts.c.family, product_counts.c.sku_name, product_counts.c.count)
            )
            per_label: dict[str, int] = {}
            for family, sku_name, count in products:
                label = family or sku_name or "unknown"
                per_label[label] = per_label.get(label, 0) + int(count)
            # max() over the (time, id) index reads one index page, not the table.
            last = (await conn.execute(select(func.max(activations.c.time)))).scalar()
        per_protocol = {
            int(name.split(":", 1)[1]): value
            for name, value in found.items()
            if name.startswith("protocol:") and name.split(":", 1)[1].lstrip("-").isdigit()
        }
        return Stats(
            clients=found.get("clients", 0),
            activations=found.get("activations", 0),
            refusals=found.get("result:refused", 0),
            per_hour=[
                (start + timedelta(hours=i), per_hour_found.get(start + timedelta(hours=i), 0))
                for i in range(STATS_HOURS)
            ],
            per_product=sorted(per_label.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_PRODUCTS],
            per_protocol=dict(sorted(per_protocol.items())),
            last_activation=last,
            refused_connections=found.get("gateway:refused_connections", 0),
        )

    # ---------------------------------------------------------------- users

    async def add_user(self, name: str, password_hash: str, *, is_admin: bool = False) -> None:
        """Create an account; UserExists when the name is taken."""
        try:
            async with self._write() as conn:
                await conn.execute(
                    insert(users).values(
                        name=name,
                        password_hash=password_hash,
                        is_admin=is_admin,
                        created=datetime.now(UTC),
                        disabled=False,
                    )
                )
        except StoreError as exc:
            if isinstance(exc.__cause__, sa_exc.IntegrityError):
                raise UserExists(name) from exc.__cause__
            raise

    async def get_user(self, name: str) -> User | None:
        """One account by exact name."""
        async with self._read() as conn:
            row = (await conn.execute(select(users).where(users.c.name == name))).first()
        return None if row is None else _user(row)

    async def set_password(self, name: str, password_hash: str) -> None:
        """Replace an account's password hash; UserNotFound when there is none."""
        async with self._write() as conn:
            result = await conn.execute(
                update(users).where(users.c.name == name).values(password_hash=password_hash)
            )
            if result.rowcount == 0:
                raise UserNotFound(name)

    async def remove_user(self, name: str) -> None:
        """Delete an account; UserNotFound when there is none."""
        async with self._write() as conn:
            result = await conn.execute(delete(users).where(users.c.name == name))
            if result.rowcount == 0:
                raise UserNotFound(name)

    async def has_admin(self) -> bool:
        """Whether an enabled administrator account exists (the dashboard can be logged into)."""
        query = (
            select(users.c.name)
            .where(users.c.is_admin.is_(True), users.c.disabled.is_(False))
            .limit(1)
        )
        async with self._read() as conn:
            return (await conn.execute(query)).first() is not None

    async def list_users(self) -> list[User]:
        """Every account, by name."""
        async with self._read() as conn:
            rows = await conn.execute(select(users).order_by(users.c.name))
            return [_user(r) for r in rows]
