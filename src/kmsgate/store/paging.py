"""Keyset paging: one listing's ordered columns, its cursor keys, and a page read with them."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Row, Select, literal, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from kmsgate.store import cursor as cursors
from kmsgate.store.engine import Dialect
from kmsgate.store.errors import InvalidCursor
from kmsgate.store.records import Page
from kmsgate.store.search import ClientSearch, sqlite_search

MAX_LIMIT = 1000
T = TypeVar("T")


# Cursor key codecs: JSON carries str/int; each sort column says how to read its value back.
def time_to_key(value: datetime) -> str:
    """A time as cursor key text (UTC ISO 8601)."""
    return value.astimezone(UTC).isoformat()


def time_from_key(value: object) -> datetime:
    """A cursor key's time; InvalidCursor unless it is ISO 8601 text with an offset."""
    if not isinstance(value, str):
        raise InvalidCursor("cursor time is not a string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidCursor("cursor time is malformed") from exc
    if parsed.tzinfo is None:
        raise InvalidCursor("cursor time has no offset")
    return parsed.astimezone(UTC)


def uuid_from_key(value: object) -> uuid.UUID:
    """A cursor key's UUID; InvalidCursor unless it is UUID text."""
    if not isinstance(value, str):
        raise InvalidCursor("cursor id is not a string")
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise InvalidCursor("cursor id is malformed") from exc


def int_from_key(value: object) -> int:
    """A cursor key's number; InvalidCursor unless it is an int that fits a BIGINT."""
    # Bound to BIGINT so a tampered huge number is rejected here, not by the driver.
    if not isinstance(value, int) or not -(2**63) <= value < 2**63:
        raise InvalidCursor("cursor number is malformed")
    return value


def str_from_key(value: object) -> str:
    """A cursor key's text; InvalidCursor unless it is a string."""
    if not isinstance(value, str):
        raise InvalidCursor("cursor text is malformed")
    return value


@dataclass(frozen=True, slots=True)
class Keyset:
    """One listing's keyset: ordered columns, direction, cursor identity and key codecs."""

    listing: str
    columns: tuple[Any, ...]
    descending: bool
    order: str
    scope: str
    to_key: tuple[Callable[[Any], cursors.KeyValue], ...]
    from_key: tuple[Callable[[object], Any], ...]

    def decode(self, token: str) -> tuple[cursors.Cursor, tuple[Any, ...]]:
        """The cursor and its key values, read back through the columns' codecs."""
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
        """The cursor token for a page boundary at `values`."""
        key = tuple(fmt(v) for fmt, v in zip(self.to_key, values, strict=True))
        return cursors.encode(cursors.Cursor(self.listing, self.order, self.scope, direction, key))


@dataclass(frozen=True, slots=True)
class Listing(Generic[T]):
    """What one listing reads: keyset, base SELECT, filters, row conversion, total query."""

    keyset: Keyset
    base: Select[Any]
    conditions: list[ColumnElement[bool]]
    convert: Callable[[Row[Any]], T]
    total_query: Select[Any] | None  # a cheap scalar, or None: no total
    search: ClientSearch | None = None


@dataclass(frozen=True, slots=True)
class PageScan(Generic[T]):
    """One page's scan of a listing, from a cursor: checked before any connection is used."""

    listing: Listing[T]
    where: list[ColumnElement[bool]]
    limit: int
    scan_desc: bool
    backward: bool
    boundary: tuple[Any, ...] | None

    @classmethod
    def start(cls, listing: Listing[T], cursor: str | None, limit: int) -> PageScan[T]:
        """The scan for `cursor`; ValueError for a bad limit, InvalidCursor for a bad cursor."""
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_LIMIT}, got {limit}")
        keyset = listing.keyset
        backward = False
        where = list(listing.conditions)
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
        return cls(listing, where, limit, scan_desc, backward, boundary)

    async def fetch(
        self, conn: AsyncConnection, dialect: Dialect, *, indexed: bool
    ) -> tuple[list[Row[Any]], int | None]:
        """Up to limit + 1 rows in scan order, and the total when the listing has one.

        `indexed`: whether SQLite search may use its trigram index.
        """
        listing, keyset, where = self.listing, self.listing.keyset, list(self.where)
        search = listing.search
        if search is not None and dialect == "sqlite":
            fetched = await sqlite_search(
                conn,
                keyset.columns,
                where,
                search,
                self.scan_desc,
                self.limit + 1,
                indexed=indexed,
            )
        else:
            if search is not None:
                where.append(search.condition(keyset.columns[0].table.c))
            order = [c.desc() if self.scan_desc else c.asc() for c in keyset.columns]
            stmt = listing.base.where(*where).order_by(*order).limit(self.limit + 1)
            fetched = list(await conn.execute(stmt))
        total: int | None = None
        if listing.total_query is not None:
            total = int((await conn.execute(listing.total_query)).scalar() or 0)
        return fetched, total

    def page(self, fetched: list[Row[Any]], total: int | None) -> Page[T]:
        """The page of the fetched rows, with the cursors to its neighbours."""
        keyset, limit, boundary = self.listing.keyset, self.limit, self.boundary
        more = len(fetched) > limit
        fetched = fetched[:limit]
        if self.backward:
            fetched.reverse()
        names = [c.key for c in keyset.columns]

        def key_of(row: Row[Any]) -> list[Any]:
            return [row._mapping[n] for n in names]

        items = [self.listing.convert(r) for r in fetched]
        next_cursor: str | None
        prev_cursor: str | None
        if self.backward:
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
