"""Connecting to the database: async engines, SQLite tuning, and errors mapped to StoreError."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from kmsgate.file_modes import PRIVATE_FILE, PRIVATE_FOLDER
from kmsgate.store.errors import StoreError, StoreUnavailable

# The two databases the store runs on.
Dialect = Literal["sqlite", "postgresql"]
SQLITE_BUSY_TIMEOUT_MS = 5000
CONNECT_TIMEOUT = 10.0
SQLITE_CACHE_KIB = 16 * 1024
# The page cache of a connection while it writes: SQLite's default size. A writer only reads
# the pages it is about to change, and keeps every page it wrote: with the writer's batches on
# one connection (pool_use_lifo below) a 16 MiB cache filled with pages of new activations
# never read again (the node's PSS under load 94 → 112 MiB). A batch of 500 records to
# 200 000 known clients takes 11–15 % longer than with 16 MiB (docs/benchmarks.md). Set at
# each BEGIN, so reads on the same connection get the larger one.
SQLITE_WRITER_CACHE_KIB = 2 * 1024
# The cache size a connection was last given (its pool record's info).
_CACHE_KIB_INFO = "kmsgate_cache_kib"
# Connections to one SQLite file: kept, and opened beyond those for a burst (closed when it
# ends). SQLite has one writer at a time; each connection is also a thread whose memory
# stays with it (page cache, statements, its malloc arena): SQLAlchemy's 5 kept + 10 more
# took a node 7 MiB over its budget once the dashboard's requests had opened them all.
SQLITE_POOL_SIZE = 2
SQLITE_POOL_OVERFLOW = 3
# Pages the WAL may hold before a commit copies them back (SQLite's default is 1000). Every
# commit appends each page it dirtied; the checkpoint writes a page once however often it was
# appended, so a larger WAL means fewer writes per record (about 40 MiB at most here).
SQLITE_WAL_AUTOCHECKPOINT = 10_000
# Execution option that makes the SQLite "begin" hook take the write lock up front.
WRITE_OPTION = "kmsgate_write"
# SQLSTATE classes that mean "try again later": connection (08), transaction rollback such as
# deadlock or serialization (40), resources such as disk full or too many clients (53),
# operator intervention such as shutdown or recovery (57).
_TRANSIENT_SQLSTATE = re.compile(r"^(08|40|53|57)")


def async_url(url: str) -> URL:
    """Map a plain sqlite:// or postgresql:// URL to its asyncio driver (aiosqlite, asyncpg)."""
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError as exc:
        raise StoreError(f"not a database URL: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend == "postgres":  # the libpq spelling
        backend = "postgresql"
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+asyncpg")
    raise StoreError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")


def masked(url: str) -> str:
    """The URL with its password hidden, for logs and display."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return "<invalid database URL>"


def sqlite_path(url: str | URL) -> Path | None:
    """File path of a SQLite URL; None for in-memory databases, file: URIs and PostgreSQL."""
    parsed = async_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser()


def create_sqlite_file(path: Path) -> None:
    """Create an empty database file (and its folder) if there is none yet.

    Neither is readable by others, whatever the umask: the file holds the accounts'
    password hashes (SQLite gives its -wal and -shm the file's own mode).
    """
    try:
        path.parent.mkdir(mode=PRIVATE_FOLDER, parents=True, exist_ok=True)
        if not path.exists():
            # Through SQLite, never a plain open(): closing any other descriptor of the file
            # would drop the locks this process's connections hold on it.
            with contextlib.closing(sqlite3.connect(path)):
                pass
            path.chmod(path.stat().st_mode & PRIVATE_FILE)
    except (OSError, sqlite3.Error) as exc:
        raise StoreUnavailable(f"cannot create the database file {path}: {exc}") from exc


FileId = tuple[int, int]
SIDECARS = ("-wal", "-shm")


def file_id(path: Path) -> FileId | None:
    """(device, inode) of the file at `path`, None when there is none; OSError if unknowable."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def log_ids(path: Path) -> tuple[FileId | None, FileId | None]:
    """(device, inode) of the -wal and the -shm now at `path`'s side, None for a missing one."""
    found: list[FileId | None] = []
    for suffix in SIDECARS:
        try:
            found.append(file_id(path.with_name(path.name + suffix)))
        except OSError:
            found.append(None)
    return found[0], found[1]


def open_descriptors() -> set[int] | None:
    """The file descriptors this process has open (/proc/self/fd); None without /proc."""
    try:
        return {int(entry.name) for entry in Path("/proc/self/fd").iterdir()}
    except (OSError, ValueError):
        return None


def log_ids_of(path: Path, descriptors: set[int]) -> tuple[set[FileId], set[FileId]]:
    """(device, inode) of those `descriptors` that are `path`'s -wal and -shm, whether or not
    they are still at the path (a deleted one reads as "... (deleted)")."""
    names = {os.path.realpath(path) + suffix: i for i, suffix in enumerate(SIDECARS)}
    found: tuple[set[FileId], set[FileId]] = (set(), set())
    for descriptor in descriptors:
        try:
            target = os.readlink(f"/proc/self/fd/{descriptor}")  # noqa: PTH115
            which = names.get(target.removesuffix(" (deleted)"))
            if which is not None:
                info = os.fstat(descriptor)
                found[which].add((info.st_dev, info.st_ino))
        except OSError:  # closed meanwhile
            continue
    return found


def sidecar_ids(path: Path) -> set[FileId]:
    """(device, inode) of the -wal and -shm files now at `path`'s side."""
    return {sidecar for sidecar in log_ids(path) if sidecar is not None}


def recreate_sqlite_file(path: Path, stale: set[FileId]) -> bool:
    """Make the path usable again after its file was deleted or replaced; True if created.

    Sidecars (-wal, -shm) of the lost file must go: SQLite would read a new file through
    the old file's log. When the file is missing, any sidecar at the path is the lost file's;
    when it was replaced, only those in `stale` (those of the lost file) are. The
    serving process and its writer process may recover at once: they take turns under a
    lock on the folder, so one never removes the sidecars of a file the other just opened.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise StoreUnavailable(f"cannot create the database file {path}: {exc}") from exc
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        missing = not path.exists()
        for suffix in (*SIDECARS, "-journal"):
            sidecar = path.with_name(path.name + suffix)
            with contextlib.suppress(FileNotFoundError):
                if missing or file_id(sidecar) in stale:
                    sidecar.unlink()
        if missing:
            create_sqlite_file(path)
        return missing
    except OSError as exc:
        raise StoreUnavailable(f"cannot recreate the database file {path}: {exc}") from exc
    finally:
        os.close(folder)  # also releases the lock


def _existing_file_url(target: URL, path: Path) -> URL:
    """The same database opened with mode=rw: a connection never creates a missing file.

    Without it, a connection opened after the file was deleted would silently start a new,
    empty database (possibly paired with the old file's -wal): only Store's recovery, which
    knows what happened, creates a new file.
    """
    return target.set(database=f"file:{quote(str(path), safe='/')}?mode=rw", query={"uri": "true"})


def make_engine(url: str, *, create: bool = True) -> AsyncEngine:
    """An AsyncEngine for a plain URL; SQLite gets WAL, NORMAL sync and a busy timeout.

    create: make a missing SQLite file now (connections themselves never create one).
    """
    target = async_url(url)
    if target.get_backend_name() == "postgresql":
        return create_async_engine(
            target,
            # After a PostgreSQL restart pooled connections are dead: test each before use.
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=10,
            # A filtered port would otherwise stall each attempt for asyncpg's default 60 s.
            connect_args={"timeout": CONNECT_TIMEOUT},
        )
    path = sqlite_path(target)
    if path is not None:
        if create:
            create_sqlite_file(path)
        engine = create_async_engine(
            _existing_file_url(target, path),
            pool_size=SQLITE_POOL_SIZE,
            max_overflow=SQLITE_POOL_OVERFLOW,
            # The most recently returned connection first: the writer's batches stay on one
            # connection, so one page cache fills, not one per pooled connection.
            pool_use_lifo=True,
        )
    else:
        # An in-memory database lives in one connection. SQLAlchemy's default StaticPool
        # would hand it to concurrent coroutines at once (one shared transaction); a
        # one-connection queue pool lends it to one at a time instead.
        engine = create_async_engine(
            target, poolclass=AsyncAdaptedQueuePool, pool_size=1, max_overflow=0
        )
    _install_sqlite_hooks(engine)
    return engine


def _install_sqlite_hooks(engine: AsyncEngine) -> None:
    """Pragmas per connection, and BEGIN emitted by us (see SQLAlchemy's SQLite notes)."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        # sqlite3's own transaction handling skips BEGIN before SELECT and DDL; take it over.
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA journal_mode = WAL")
            # WAL + NORMAL: a crash of the process loses nothing committed; power loss may
            # lose the last transactions but never corrupts the file.
            cur.execute("PRAGMA synchronous = NORMAL")
            # The reads' size until a BEGIN says otherwise: SQLite's 2 MiB default thrashes
            # on the dashboard's queries over a million clients.
            cur.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
            record.info[_CACHE_KIB_INFO] = SQLITE_CACHE_KIB
            # No memory-mapped reads of the database file: an I/O error on a mapped page
            # (a file made unreadable, truncated or on a failing disk) is a SIGBUS that kills
            # the process, where read() returns an error the writer retries (issue 11, S1).
            cur.execute("PRAGMA mmap_size = 0")
            cur.execute(f"PRAGMA wal_autocheckpoint = {SQLITE_WAL_AUTOCHECKPOINT}")
        finally:
            cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers lock at BEGIN so that busy_timeout applies; a deferred transaction that
        # upgrades from read to write can fail at once with SQLITE_BUSY instead.
        write = conn.get_execution_options().get(WRITE_OPTION, False)
        kib = SQLITE_WRITER_CACHE_KIB if write else SQLITE_CACHE_KIB
        info = conn.connection.info
        if info.get(_CACHE_KIB_INFO) != kib:
            conn.exec_driver_sql(f"PRAGMA cache_size = -{kib}")
            info[_CACHE_KIB_INFO] = kib
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _sqlstate(exc: BaseException) -> str:
    """SQLSTATE of a (wrapped) driver error, '' when there is none."""
    for candidate in (exc, getattr(exc, "orig", None), getattr(exc, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return ""


def classify(exc: BaseException) -> StoreError:
    """Turn a driver or SQLAlchemy exception into StoreUnavailable (transient) or StoreError."""
    if isinstance(exc, StoreError):
        return exc
    text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    transient = (
        isinstance(
            exc,
            OSError | TimeoutError | sa_exc.OperationalError | sa_exc.InterfaceError,
        )
        or (
            isinstance(exc, sa_exc.DBAPIError | sa_exc.DisconnectionError)
            and bool(getattr(exc, "connection_invalidated", False))
        )
        or isinstance(exc, sa_exc.TimeoutError)  # pool exhausted: the database is slow
        or bool(_TRANSIENT_SQLSTATE.match(_sqlstate(exc)))
        # asyncpg's own connection failures (ConnectionDoesNotExistError, ...) may escape raw.
        or (type(exc).__module__.startswith("asyncpg") and "Connection" in type(exc).__name__)
    )
    return StoreUnavailable(text) if transient else StoreError(text)


@contextmanager
def translated() -> Iterator[None]:
    """Re-raise database failures as typed store errors; our own errors pass through."""
    try:
        yield
    except (StoreError, ValueError):
        raise
    except (sa_exc.SQLAlchemyError, OSError, TimeoutError) as exc:
        raise classify(exc) from exc
    except Exception as exc:
        # asyncpg raises its own classes from connect() without SQLAlchemy wrapping them.
        if type(exc).__module__.startswith("asyncpg"):
            raise classify(exc) from exc
        raise
