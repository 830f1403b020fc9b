"""Noticing a SQLite file or its log deleted or replaced while in use, and reopening it.

A SQLite file deleted or replaced while open keeps taking writes that nobody will ever read:
its identity at connect time is compared with the path's (issue 11, S2). Its -wal deleted
under open connections holds every commit since the last checkpoint, gone at the next crash,
and a -shm replaced splits the connections between two indexes of one log: the identities
of both, as the open connections met them, are compared too.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from kmsgate.store.engine import (
    FileId,
    file_id,
    log_ids,
    log_ids_of,
    open_descriptors,
    recreate_sqlite_file,
    sidecar_ids,
    translated,
)
from kmsgate.store.errors import FileMoved, StoreUnavailable

log = logging.getLogger("kmsgate.store")

# How often at most a SQLite file's identity is compared with the path's (one stat call).
FILE_CHECK_INTERVAL = 1.0
# A lost log is checkpointed once every connection is back in the pool: waiting this long.
RETURN_TRIES, RETURN_WAIT = 500, 0.02
# A connection record's note of the descriptors open before its driver connected.
_DESCRIPTORS_BEFORE = "kmsgate_descriptors_before"


class FileWatch:
    """The file a Store's connections opened, against the one its path names now."""

    def __init__(self, path: Path, *, clock: Callable[[], float], recreate: bool) -> None:
        """`recreate`: may create a file that was missing from the start."""
        self.path = path
        self._clock = clock
        self._recreate = recreate
        self._file: FileId | None = None
        self._sidecars: set[FileId] = set()  # the -wal and -shm the connections met
        self._suspect = False  # a connection met another file, or a recovery failed
        self._open: set[int] = set()  # the pool's connections (ids), opened and not closed
        # The -wal and -shm the open connections hold; None while none is open.
        self._log: tuple[set[FileId], set[FileId]] | None = None
        self._reopening = False  # the log was lost: operations wait for its recovery
        self._next_check = 0.0
        self._recovering = asyncio.Lock()

    def on_connect(self, dbapi_connection: Any, _record: Any) -> None:
        """The engine's first connect hook: remember the file, or refuse a second one.

        FileMoved for a connection to another file than the pool's: it has not read yet, and
        must not: the path's -wal is still the lost file's, and a connection reading it would
        show that file's pages over the new one (and copy them into it when it closes last).
        Likewise while the open connections' log is lost: it would pair their index with
        another -wal.
        """
        try:
            current = file_id(self.path)
        except OSError:
            return
        if self._file is None:
            self._file = current
        elif current != self._file or self.log_lost():
            self._suspect = self._suspect or current != self._file
            dbapi_connection.close()
            raise FileMoved(f"database file {self.path} or its log was replaced or deleted")
        # Remembered per Store, not looked up per process: another Store of this process
        # may already use a new file's sidecars, which are not the lost file's.
        self._sidecars |= sidecar_ids(self.path)

    def on_dialing(self, _dialect: Any, record: Any, *_args: Any) -> None:
        """The engine's do_connect hook, before the driver opens anything: which descriptors
        are open already (kept with the connection: others may be opening meanwhile)."""
        record.info[_DESCRIPTORS_BEFORE] = open_descriptors()

    def on_opened(self, dbapi_connection: Any, record: Any) -> None:
        """The engine's last connect hook: note the log this connection opened."""
        self._open.add(id(dbapi_connection))
        # A read opens the log if the pragmas did not (a file just switched to WAL).
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1 FROM sqlite_master LIMIT 1")
            cursor.fetchall()
        finally:
            cursor.close()
        before, after = record.info.pop(_DESCRIPTORS_BEFORE, None), open_descriptors()
        if before is None or after is None:  # no /proc: what the path names now
            self._note_log(tuple({i} if i else set() for i in log_ids(self.path)))
        else:
            # The descriptors this connection opened: another Store of this process may
            # hold another file's log at the same path.
            self._note_log(log_ids_of(self.path, after - before))

    def on_close(self, dbapi_connection: Any, _record: Any) -> None:
        """The pool's close hook: the last connection closed takes the log with it."""
        self._open.discard(id(dbapi_connection))
        if not self._open:
            self._log = None

    def _note_log(self, found: tuple[set[FileId], ...]) -> None:
        """Add to the -wal and -shm the open connections hold."""
        seen = self._log or (set(), set())
        self._log = (seen[0] | found[0], seen[1] | found[1])

    def _forget(self) -> None:
        """After the pool's connections were disposed of: the next one starts afresh."""
        self._file, self._sidecars, self._log, self._open = None, set(), None, set()

    def _held(self) -> set[FileId]:
        """The log files this Store's open connections hold (no new file can share their
        numbers while they do)."""
        return set().union(*self._log) if self._log else set()

    def log_lost(self) -> bool:
        """Whether a -wal or -shm the open connections hold is no longer at the path."""
        if self._log is None:
            return False
        now = log_ids(self.path)
        return any(held != {now[i]} for i, held in enumerate(self._log) if held)

    def moved(self) -> str | None:
        """'deleted' or 'replaced' when the path no longer names the file we write to;
        'missing' when there never was one and this Store may not create it."""
        try:
            current = file_id(self.path)
        except OSError:
            return None  # the folder cannot be searched: the next statement will say why
        if current is None:
            return "deleted" if self._file is not None or self._recreate else "missing"
        if self._file is not None and current != self._file:
            return "replaced"
        return "replaced" if self._suspect else None

    def needs_recovery(self, *, writing: bool = False) -> bool:
        """Whether the file or its log was deleted or replaced (a few stat calls, once a
        second at most; before every write: a write through a lost log may damage the file
        another process writes through the new one).

        StoreUnavailable when it is missing and may not be created.
        """
        if self._reopening:
            return True
        now = self._clock()
        if not writing and now < self._next_check and not self._suspect and self._file is not None:
            return False
        if not writing:
            self._next_check = now + FILE_CHECK_INTERVAL
        match self.moved():
            case "missing":
                # Said here: SQLite's own "unable to open database file" names no file.
                raise StoreUnavailable(f"there is no database file {self.path}")
            case None:
                if self.log_lost():
                    return True
                if self._file is not None:
                    self._sidecars |= sidecar_ids(self.path)
                return False
            case _:
                return True

    async def recover(self, engine: AsyncEngine) -> bool:
        """Close the connections to the lost file, recreate it if missing, migrate, reopen.

        False when another task of this process recovered meanwhile.
        """
        async with self._recovering:
            why = self.moved()
            if why is None:
                if not self.log_lost() and not self._reopening:
                    return False
                await self._recover_log(engine)
                return True
            log.warning("database file %s was %s while in use: reopening it", self.path, why)
            self._suspect = True  # until this succeeds: the next check tries again
            stale = self._sidecars | self._held()
            await engine.dispose()
            self._forget()
            created = await asyncio.to_thread(recreate_sqlite_file, self.path, stale)
            # Alembic is imported only now: the writer process does not migrate otherwise.
            from kmsgate.store.migrate import run_upgrade

            with translated():
                await run_upgrade(engine)
            self._suspect = False
            log.warning(
                "database file %s %s; writing there from now on",
                self.path,
                "created anew with an empty schema" if created else "reopened",
            )
            return True

    async def _recover_log(self, engine: AsyncEngine) -> None:
        """Checkpoint the lost log into the file, then reopen with a new log.

        All of this process's connections must close first: they share one index (-shm)
        per file, which a new connection would pair with the new -wal.
        """
        if not self._reopening:
            log.warning(
                "the log of database file %s (its -wal or -shm) was deleted or replaced while "
                "in use: writing what it holds into the file, then reopening",
                self.path,
            )
            self._reopening = True  # from now on no operation takes a connection (see check)
        pool: Any = engine.sync_engine.pool
        for _ in range(RETURN_TRIES):
            if pool.checkedout() == 0:
                break
            await asyncio.sleep(RETURN_WAIT)
        else:
            raise StoreUnavailable(f"database file {self.path}: its lost log is still in use")
        busy, frames, copied = await self._checkpoint(engine)
        if busy or copied != frames:
            # Left in place: SQLite may still copy it when the last connection closes.
            log.error(
                "database file %s: its lost log could not be written into it (%s of %s "
                "pages): what it held since the last checkpoint may be lost",
                self.path,
                copied,
                frames,
            )
        else:
            # The old log's files still at the path go: a new connection would pair them
            # with new ones. Only files this process holds open now, whose numbers no new
            # file can have taken (another process's new log is not ours to remove).
            await asyncio.to_thread(recreate_sqlite_file, self.path, self._held())
        await engine.dispose()
        self._forget()
        self._reopening = False
        log.warning("database file %s reopened with a new log", self.path)

    async def _checkpoint(self, engine: AsyncEngine) -> tuple[int, int, int]:
        """PRAGMA wal_checkpoint(TRUNCATE) on a pooled connection: (busy, frames, copied)."""
        try:
            async with engine.connect() as conn:
                fairy = await conn.get_raw_connection()
                # On the driver's connection: SQLAlchemy would BEGIN first, and a checkpoint
                # inside a transaction cannot copy the log.
                driver: Any = fairy.driver_connection  # aiosqlite's Connection
                cursor = await driver.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                busy, frames, copied = await cursor.fetchone()
                await cursor.close()
                return busy, frames, copied
        except FileMoved:  # no connection was left to the lost log
            return 1, -1, -1
        except sqlite3.Error as exc:  # e.g. the log cut short under it
            log.warning("database file %s: checkpoint of the lost log failed: %s", self.path, exc)
            return 1, -1, -1
