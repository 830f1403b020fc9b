"""Many rows into one SQLite table per statement, bound in C when _sqlite_rows.c is built.

The sqlite3 module spends about 5 000 instructions a row of eleven values beyond SQLite's own
work (docs/benchmarks.md); _sqlite_rows.c binds the values where they lie, on the
connection's own handle and library. It is used only where it can be trusted: CPython 3.11
to 3.14 (whose sqlite3.Connection holds the handle first), after a limit set through the
module has read back the same through the handle. Anywhere else, or with
KMSGATE_PURE_PYTHON_SQLITE_ROWS=1, the rows go through the sqlite3 module as before.
"""

from __future__ import annotations

import sqlite3
import sys
from typing import Any, Final

from kmsgate._native import optional_extension

# What a failing step's primary result code raises, as the sqlite3 module maps it.
_ERRORS: Final[dict[int, type[Exception]]] = {
    2: sqlite3.InternalError,  # SQLITE_INTERNAL
    12: sqlite3.InternalError,  # SQLITE_NOTFOUND
    7: MemoryError,  # SQLITE_NOMEM
    11: sqlite3.DatabaseError,  # SQLITE_CORRUPT
    26: sqlite3.DatabaseError,  # SQLITE_NOTADB
    18: sqlite3.DataError,  # SQLITE_TOOBIG
    19: sqlite3.IntegrityError,  # SQLITE_CONSTRAINT
    20: sqlite3.IntegrityError,  # SQLITE_MISMATCH
    21: sqlite3.InterfaceError,  # SQLITE_MISUSE
    25: sqlite3.InterfaceError,  # SQLITE_RANGE
}
_OPERATIONAL: Final = frozenset({1, 3, 4, 5, 6, 8, 9, 10, 13, 14, 15, 16, 17})
# Probed through the module and read back through the handle: a value nothing else sets.
_PROBED_LIMIT: Final = sqlite3.SQLITE_LIMIT_TRIGGER_DEPTH
_KNOWN_LAYOUTS: Final = ((3, 11), (3, 12), (3, 13), (3, 14))


def error_of(code: int, message: str) -> Exception:
    """The sqlite3 exception a step failing with this extended result code raises."""
    primary = code & 0xFF
    kind = sqlite3.OperationalError if primary in _OPERATIONAL else _ERRORS.get(primary)
    error = (kind or sqlite3.DatabaseError)(message)
    if isinstance(error, sqlite3.Error):
        error.sqlite_errorcode = code
    return error


def _load() -> tuple[Any, str]:
    if sys.implementation.name != "cpython" or sys.version_info[:2] not in _KNOWN_LAYOUTS:
        return None, "not a CPython whose sqlite3.Connection layout is known"
    module, why = optional_extension("kmsgate.store._sqlite_rows", "SQLITE_ROWS")
    if module is None:
        return None, why
    import _sqlite3

    try:
        module.attach(_sqlite3.__file__, error_of)
    except ImportError as exc:  # a sqlite3 module linked statically, without exports
        return None, str(exc)
    return module, why


_C, C_ROWS_BUILD = _load()


def _handle_checked(db: sqlite3.Connection) -> bool:
    """Whether _sqlite_rows.c reads this connection's handle right."""
    if type(db) is not sqlite3.Connection:
        return False
    before = db.getlimit(_PROBED_LIMIT)
    probe = before - 1 if before > 1 else before + 1
    db.setlimit(_PROBED_LIMIT, probe)
    try:
        return bool(_C.limit_of(db, _PROBED_LIMIT) == probe)
    finally:
        db.setlimit(_PROBED_LIMIT, before)


class RowStatement:
    """An INSERT of `rows` rows a step, prepared on a sqlite3 connection and stepped from C.

    Close it before the connection is closed or returned: a prepared statement keeps SQLite's
    connection, and its files, open.
    """

    def __init__(self, statement: Any, rows: int) -> None:
        self._statement = statement
        self.rows = rows

    def insert(self, rows: list[tuple[Any, ...]]) -> None:
        """Insert rows (a multiple of `self.rows`) in the caller's transaction."""
        self._statement.insert(rows)

    def close(self) -> None:
        self._statement.close()


def describe() -> str:
    """How activation rows are bound here, for the start-up log."""
    return (
        f"from C ({C_ROWS_BUILD})" if _C is not None else f"by the sqlite3 module ({C_ROWS_BUILD})"
    )


def rows_in_c() -> bool:
    """Whether rows can be bound from C here (row_statement may still refuse a connection)."""
    return _C is not None


def row_statement(db: sqlite3.Connection, sql: str, rows: int, kinds: str) -> RowStatement | None:
    """`sql` (an INSERT of `rows` rows, a value of each of `kinds` a row) prepared on `db` for
    C to step, or None where that cannot be trusted (the sqlite3 module then does the work).

    `kinds`, a letter a column: v binds the value as it is, t an int of microseconds since
    the epoch as UtcDateTime's text, h 16 bytes (or None) as Uuid's 32 hex digits.
    """
    if _C is None or not _handle_checked(db):
        return None
    return RowStatement(_C.RowStatement(db, sql, rows, len(kinds), kinds), rows)
