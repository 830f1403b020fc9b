"""Persistence: SQLAlchemy Core repositories over SQLite or PostgreSQL, write-behind queue."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kmsgate.store.database import Store
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
    from kmsgate.store.writer import RecordWriter

# Lazy: the plain records must not drag SQLAlchemy into processes that only build them.
_HOME = {
    "Store": "database",
    "RecordWriter": "writer",
    **dict.fromkeys(
        ("InvalidCursor", "StoreError", "StoreUnavailable", "UserExists", "UserNotFound"),
        "errors",
    ),
    **dict.fromkeys(
        ("ActivationRecord", "ActivationRow", "ClientRow", "Page", "Stats", "User"), "records"
    ),
}

__all__ = [
    "ActivationRecord",
    "ActivationRow",
    "ClientRow",
    "InvalidCursor",
    "Page",
    "RecordWriter",
    "Stats",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "User",
    "UserExists",
    "UserNotFound",
]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"kmsgate.store.{module}"), name)
