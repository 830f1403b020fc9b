"""Persistence: SQLAlchemy Core repositories over SQLite or PostgreSQL, write-behind queue."""

from kmsgate.store.database import Store
from kmsgate.store.errors import (
    InvalidCursor,
    StoreError,
    StoreUnavailable,
    UserExists,
    UserNotFound,
)
from kmsgate.store.records import ActivationRecord, ActivationRow, ClientRow, Page, Stats, User
from kmsgate.store.writer import RecordWriter

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
