"""The Store: async repository functions over SQLite (one node) or PostgreSQL (several nodes).

This module holds the Store's lifecycle and plumbing (connections, transactions, the SQLite
file's identity); the queries live in listings.py, paging.py, stats.py, users.py, counts.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import event, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from kmsgate.store import users as accounts
from kmsgate.store.activation_batch import BatchWriter, SqliteBatchWriter
from kmsgate.store.activation_fold import FoldedBatch, aware, fold, hour_of
from kmsgate.store.counts import add_counts, dialect_insert
from kmsgate.store.drafts import RecordDraft, draft_of
from kmsgate.store.engine import WRITE_OPTION, Dialect, make_engine, masked, sqlite_path, translated
from kmsgate.store.errors import FileMoved, StoreError, StoreUnavailable, UserExists
from kmsgate.store.listings import (
    ClientSort,
    activation_listing,
    client_listing,
    client_query,
    client_row,
    history_listing,
)
from kmsgate.store.paging import Listing, PageScan
from kmsgate.store.postgres_batch import PostgresBatchWriter
from kmsgate.store.records import ActivationRecord, ActivationRow, ClientRow, Page, Stats, User
from kmsgate.store.schema import counters
from kmsgate.store.schema_version import at_head
from kmsgate.store.search import has_index
from kmsgate.store.sqlite_file import FileWatch
from kmsgate.store.stats import read_stats

if TYPE_CHECKING:
    from sqlalchemy.dialects import postgresql, sqlite

# A batch whose file was deleted while it was written is written again, this often at most.
REWRITES = 2
# Drafts folded between two turns of the event loop (~0.5 ms of CPU under load).
FOLD_PART = 250
# The counter probe_write() bumps: a write that proves the store takes writes.
_PROBE_ROW = {"name": "store:write_probes", "value": 1}
T = TypeVar("T")


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
        # Set for a SQLite file: notices the file deleted or replaced while in use.
        path = sqlite_path(url) if self.dialect == "sqlite" else None
        self._watch = None if path is None else FileWatch(path, clock=clock, recreate=recreate)
        self.recreated = 0  # files found deleted or replaced, and reopened
        if self._watch is not None:
            # First, before the pragmas' statements open the path's -wal.
            event.listen(engine.sync_engine, "do_connect", self._watch.on_dialing)
            event.listen(engine.sync_engine, "connect", self._watch.on_connect, insert=True)
            event.listen(engine.sync_engine, "connect", self._watch.on_opened)
            event.listen(engine.sync_engine, "close", self._watch.on_close)

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
            try:
                with translated():
                    if not await at_head(engine):
                        # Alembic is imported only here: most starts find nothing to do.
                        from kmsgate.store.migrate import run_upgrade

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

    def _moved(self) -> str | None:
        """How the SQLite file was lost ('deleted', 'replaced', 'missing'), or None."""
        return None if self._watch is None else self._watch.moved()

    async def _check_file(self, *, writing: bool = False) -> None:
        """Reopen the database if its file or log was deleted or replaced (FileWatch)."""
        if self._watch is not None and self._watch.needs_recovery(writing=writing):
            await self._recover()

    async def _recover(self) -> None:
        """Reopen a lost SQLite file (see FileWatch.recover).

        Records that reached the lost file before this are gone with it; the writer's batch
        in flight is written again (see record_activations).
        """
        assert self._watch is not None
        if await self._watch.recover(self._engine):
            self._search_indexed = None
            self.recreated += 1

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
    async def _connection(self, *, writing: bool = False) -> AsyncIterator[AsyncConnection]:
        """A pooled connection to the file at the path, reopening a lost file first."""
        await self._check_file(writing=writing)
        async with AsyncExitStack() as stack:
            try:
                conn = await stack.enter_async_context(self._engine.connect())
            except FileMoved:
                await self._recover()
                conn = await stack.enter_async_context(self._engine.connect())
            yield conn

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        with translated():
            async with self._connection() as conn:
                try:
                    yield conn
                except sa_exc.OperationalError:
                    await self._discard(conn)
                    raise

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        with translated():
            async with self._connection(writing=True) as conn:
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
        return dialect_insert(self.dialect, table)

    async def _add_counts(
        self,
        conn: AsyncConnection,
        table: Any,
        keys: Sequence[str],
        value: str,
        rows: Sequence[Mapping[str, Any]],
    ) -> None:
        """Upsert `value += n` rows; callers pass them sorted so nodes lock in one order."""
        await add_counts(conn, self.dialect, table, keys, value, rows)

    # ---------------------------------------------------------------- activations

    async def record_activations(self, records: Sequence[ActivationRecord]) -> None:
        """Store a batch in one transaction: activation rows, client rows, counters."""
        await self.record_drafts([draft_of(record) for record in records])

    async def record_drafts(self, drafts: Sequence[RecordDraft]) -> None:
        """record_activations for well-formed drafts (checked_draft), the writer's shape."""
        if not drafts:
            return
        batch = await self._fold(drafts)
        for attempt in range(REWRITES + 1):
            await self._write_batch(batch)
            # Committed into a file deleted meanwhile? Nobody would ever read it: once a new
            # file is in place, write the batch again. (A file still at its path after the
            # commit held the batch when it was deleted later, along with the rest.)
            if self._moved() is None:
                return
            if attempt < REWRITES:
                await self._recover()
        path = None if self._watch is None else self._watch.path
        raise StoreUnavailable(f"database file {path} keeps disappearing")

    async def _fold(self, drafts: Sequence[RecordDraft]) -> FoldedBatch:
        """fold() a part at a time, letting the event loop run between parts: a batch of
        thousands folded in one go held the KMS answers for milliseconds."""
        driver = self._batch_writer.driver
        batch = fold(drafts[:FOLD_PART], driver)
        for start in range(FOLD_PART, len(drafts), FOLD_PART):
            await asyncio.sleep(0)
            batch.extend(fold(drafts[start : start + FOLD_PART], driver))
        return batch

    async def _write_batch(self, batch: FoldedBatch) -> None:
        async with self._write() as conn:
            await self._batch_writer.write(conn, batch)

    # ---------------------------------------------------------------- listings

    async def _page(self, listing: Listing[T], cursor: str | None, limit: int) -> Page[T]:
        """One keyset page of `listing`, rows and total from one read."""
        scan = PageScan.start(listing, cursor, limit)
        async with self._read() as conn:
            searching = listing.search is not None and self.dialect == "sqlite"
            if searching and self._search_indexed is None:
                self._search_indexed = await has_index(conn)
            fetched, total = await scan.fetch(
                conn, self.dialect, indexed=bool(self._search_indexed)
            )
        return scan.page(fetched, total)

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
        listing = client_listing(search, sort, descending, self.dialect)
        return await self._page(listing, cursor, limit)

    async def get_client(self, cmid: uuid.UUID) -> ClientRow | None:
        """One client by CMID."""
        async with self._read() as conn:
            row = (await conn.execute(client_query(cmid))).first()
        return None if row is None else client_row(row)

    async def client_history(
        self, cmid: uuid.UUID, *, cursor: str | None = None, limit: int = 50
    ) -> Page[ActivationRow]:
        """One client's requests, newest first; total is its request count."""
        return await self._page(history_listing(cmid), cursor, limit)

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
        listing = activation_listing(since, until, result, node)
        return await self._page(listing, cursor, limit)

    async def stats(self, now: datetime) -> Stats:
        """Dashboard figures from counters and hourly buckets; never scans the big tables."""
        end = hour_of(aware(now, "now"))
        async with self._read() as conn:
            return await read_stats(conn, end)

    # ---------------------------------------------------------------- users

    async def add_user(self, name: str, password_hash: str, *, is_admin: bool = False) -> None:
        """Create an account; UserExists when the name is taken."""
        try:
            async with self._write() as conn:
                await accounts.insert_user(conn, name, password_hash, is_admin=is_admin)
        except StoreError as exc:
            if isinstance(exc.__cause__, sa_exc.IntegrityError):
                raise UserExists(name) from exc.__cause__
            raise

    async def get_user(self, name: str) -> User | None:
        """One account by exact name."""
        async with self._read() as conn:
            return await accounts.find_user(conn, name)

    async def set_password(self, name: str, password_hash: str) -> None:
        """Replace an account's password hash; UserNotFound when there is none."""
        async with self._write() as conn:
            await accounts.update_password(conn, name, password_hash)

    async def remove_user(self, name: str) -> None:
        """Delete an account; UserNotFound when there is none."""
        async with self._write() as conn:
            await accounts.delete_user(conn, name)

    async def has_admin(self) -> bool:
        """Whether an enabled administrator account exists (the dashboard can be logged into)."""
        async with self._read() as conn:
            return await accounts.admin_exists(conn)

    async def list_users(self) -> list[User]:
        """Every account, by name."""
        async with self._read() as conn:
            return await accounts.all_users(conn)
