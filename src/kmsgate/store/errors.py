"""Typed exceptions of the store layer."""

from __future__ import annotations

from kmsgate.errors import KmsgateError


class StoreError(KmsgateError):
    """A database operation failed."""


class StoreUnavailable(StoreError):  # noqa: N818 (name fixed by the store contract)
    """The database cannot be reached or cannot write now (down, locked, read-only, full)."""


class FileMoved(StoreUnavailable):
    """A new SQLite connection met another file at the path than the Store's: reopen first."""


class UserExists(StoreError):  # noqa: N818 (name fixed by the store contract)
    """A user with that name already exists."""

    def __init__(self, name: str) -> None:
        super().__init__(f"user {name!r} already exists")
        self.name = name


class UserNotFound(StoreError):  # noqa: N818 (name fixed by the store contract)
    """No user has that name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no user {name!r}")
        self.name = name


class InvalidCursor(StoreError):  # noqa: N818 (name fixed by the store contract)
    """A paging cursor is malformed or belongs to another listing (HTTP 400)."""
