"""Noticing a SQLite file deleted or replaced while in use, and reopening it (issue 11, S2).

A SQLite file deleted or replaced while open keeps taking writes that nobody will ever read:
its identity at connect time is compared with the path's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from kmsgate.store.engine import (
    FileId,
    file_id,
    recreate_sqlite_file,
    sidecar_ids,
    translated,
)
from kmsgate.store.errors import FileMoved, StoreUnavailable

log = logging.getLogger("kmsgate.store")

# How often at most a SQLite file's identity is compared with the path's (one stat call).
FILE_CHECK_INTERVAL = 1.0


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
        self._next_check = 0.0
        self._recovering = asyncio.Lock()

    def on_connect(self, dbapi_connection: Any, _record: Any) -> None:
        """The engine's first connect hook: remember the file, or refuse a second one.

        FileMoved for a connection to another file than the pool's: it has not read yet, and
        must not: the path's -wal is still the lost file's, and a connection reading it would
        show that file's pages over the new one (and copy them into it when it closes last).
        """
        try:
            current = file_id(self.path)
        except OSError:
            return
        if self._file is None:
            self._file = current
        elif current != self._file:
            self._suspect = True
            dbapi_connection.close()
            raise FileMoved(f"database file {self.path} was replaced or deleted while in use")
        # Remembered per Store, not looked up per process: another Store of this process
        # may already use a new file's sidecars, which are not the lost file's.
        self._sidecars |= sidecar_ids(self.path)

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

    def needs_recovery(self) -> bool:
        """Whether the file was deleted or replaced (a stat, once a second at most).

        StoreUnavailable when it is missing and may not be created.
        """
        now = self._clock()
        if now < self._next_check and not self._suspect and self._file is not None:
            return False
        self._next_check = now + FILE_CHECK_INTERVAL
        match self.moved():
            case "missing":
                # Said here: SQLite's own "unable to open database file" names no file.
                raise StoreUnavailable(f"there is no database file {self.path}")
            case None:
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
                return False
            log.warning("database file %s was %s while in use: reopening it", self.path, why)
            self._suspect = True  # until this succeeds: the next check tries again
            stale = self._sidecars
            await engine.dispose()
            self._file, self._sidecars = None, set()
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
