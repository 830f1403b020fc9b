"""Client search: one exact filter for both dialects, and SQLite's way of finding it fast."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Row,
    Select,
    column,
    literal,
    literal_column,
    or_,
    select,
    table,
    text,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncConnection

# PostgreSQL answers the filter from trigram GIN indexes (migration 0001). On SQLite, the
# FTS5 trigram table of migrations 0003 and 0012 (names, addresses, made-up SKU names) and
# the catalogue SKU names the term matches only propose candidates: the same filter decides.
# The table is absent when that SQLite had no trigram tokenizer.
FTS_TABLE = "clients_search"
# The trigram tokenizer matches nothing for shorter terms.
MIN_INDEXED_LENGTH = 3
# Rows of the sort order a SQLite search filters before it scans (terms the index cannot find).
SEARCH_WINDOW = 5_000
# Index candidates few enough to read and sort directly: no more reads than a window.
RARE_HITS = 5_000
# The window for terms with more candidates: at 1 M clients they are 0.5 %+ of the rows, so
# it holds a full page unless matches cluster elsewhere in the order.
INDEXED_WINDOW = 20_000
# SKU names a client can make up (catalog.product_name: "unknown", "unknown (<guid>)") sort in
# [first, end): the index holds those (migration 0012). The others are catalogue names, a
# few hundred, matched by name and found through the SKU sort index.
UNKNOWN_SKUS = ("unknown", "unknowo")

# MATCH goes against the hidden column named after the table; rowid leads back to clients.
_fts = table(FTS_TABLE, column("rowid"), column(FTS_TABLE))


def escape_like(text: str) -> str:
    """Make LIKE's wildcards and the escape character literal (escape="\\")."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True, slots=True)
class ClientSearch:
    """A search term: substring of machine or SKU name, or prefix of the last address."""

    term: str
    dialect: str

    def condition(self, c: Any) -> ColumnElement[bool]:
        """The exact filter over a column collection (clients.c or a subquery's)."""
        like = f"%{escape_like(self.term)}%"
        prefix = f"{escape_like(self.term)}%"
        if self.dialect == "sqlite":
            # SQLite's LIKE already ignores ASCII case (and lower() knows only ASCII).
            name = c.machine_name.like(like, escape="\\")
            sku = c.sku_name.like(like, escape="\\")
        else:
            name = c.machine_name.ilike(like, escape="\\")
            sku = c.sku_name.ilike(like, escape="\\")
        return or_(name, sku, c.last_address.like(prefix, escape="\\"))

    def fts_phrase(self) -> str | None:
        """The term as an FTS5 phrase string; None when the trigram index cannot find it."""
        # FTS5 strings cannot hold NUL, so such terms are scanned.
        if len(self.term) < MIN_INDEXED_LENGTH or "\x00" in self.term:
            return None
        return '"' + self.term.replace('"', '""') + '"'


async def has_index(conn: AsyncConnection) -> bool:
    """Whether migration 0003 created the FTS table (it skips it without FTS5 trigram)."""
    found = await conn.execute(
        select(literal(1))
        .select_from(table("sqlite_master", column("type"), column("name")))
        .where(column("type") == "table", column("name") == FTS_TABLE)
    )
    return found.first() is not None


async def sqlite_search(
    conn: AsyncConnection,
    columns: Sequence[Any],
    where: Sequence[ColumnElement[bool]],
    search: ClientSearch,
    descending: bool,
    wanted: int,
    *,
    indexed: bool,
) -> list[Row[Any]]:
    """Up to `wanted` clients matching `search` and `where`, ordered by `columns`."""
    # Walking the sort index and filtering reads the table in random order: fast while
    # matches are common, seconds when they are rare. So rare terms come from the trigram
    # index, common ones from a walk of the first rows of the order (exact whenever they
    # hold a full page); failing both, filter the index's candidates (or the whole table)
    # and sort. Trigrams fold case Unicode-wide, wider than LIKE: the exact condition
    # re-checks every candidate.
    clients = columns[0].table
    matching = select(clients).where(search.condition(clients.c), *where)
    rowid: ColumnElement[Any] = literal_column(f"{clients.name}.rowid")
    # Unary "+" keeps SQLite off the sort index: fetching candidates (or a sequential scan)
    # and sorting beats a random-order walk. Names come from the fixed sort-key set.
    direction = "DESC" if descending else "ASC"
    unindexed: list[ColumnElement[Any]] = [
        literal_column(f"+{clients.name}.{c.key} {direction}") for c in columns
    ]
    phrase = search.fts_phrase() if indexed else None
    window = SEARCH_WINDOW
    named: list[str] = []
    if phrase is not None:
        # The phrase anywhere in the row (LIMIT stops the query early), and the clients of the
        # catalogue SKU names the term matches, which the index leaves out.
        named = await _named_skus(conn, search)
        hits = set(await _fts_rowids(conn, phrase, RARE_HITS + 1))
        if named and len(hits) <= RARE_HITS:
            hits.update(await _rowids_of_skus(conn, clients, named, RARE_HITS + 1))
        if len(hits) <= RARE_HITS:
            if not hits:
                return []
            rare = matching.where(rowid.in_(sorted(hits))).order_by(*unindexed).limit(wanted)
            return list(await conn.execute(rare))
        window = INDEXED_WINDOW

    order = [c.desc() if descending else c.asc() for c in columns]
    # The window's last key, read from the covering (key, cmid) index alone: cheap.
    edge = (
        await conn.execute(
            select(*columns).where(*where).order_by(*order).offset(window - 1).limit(1)
        )
    ).first()
    walk = matching
    if edge is not None:
        row = tuple_(*columns)
        bound = tuple_(*(literal(v, type_=c.type) for c, v in zip(columns, edge, strict=True)))
        walk = walk.where(row >= bound if descending else row <= bound)
    # LIMIT ends the walk as soon as the page is full.
    rows = list(await conn.execute(walk.order_by(*order).limit(wanted)))
    if len(rows) == wanted or edge is None:
        return rows

    rest = matching
    if phrase is not None:
        # Addresses by prefix, not substring: far fewer candidates for terms like "0.1".
        narrow = f"{{machine_name sku_text}} : {phrase} OR last_address : ^{phrase}"
        candidates: ColumnElement[bool] = rowid.in_(_fts_match(narrow))
        if named:
            candidates = or_(candidates, clients.c.sku_name.in_(named))
        rest = rest.where(candidates)
    return list(await conn.execute(rest.order_by(*unindexed).limit(wanted)))


def _fts_match(query: str) -> Select[Any]:
    return select(_fts.c.rowid).where(_fts.c[FTS_TABLE].match(query))


async def _fts_rowids(conn: AsyncConnection, query: str, limit: int) -> list[int]:
    """Up to `limit` rowids of clients the index matches to `query`."""
    return list((await conn.execute(_fts_match(query).limit(limit))).scalars())


# The distinct SKU names outside UNKNOWN_SKUS, each found by one seek of the SKU sort index
# from the one before (the made-up names, as many as clients care to send, are skipped in
# one seek), kept when the term matches them as the exact filter does.
_NAMED_SKUS = text(
    """
    WITH RECURSIVE names(name) AS (
        SELECT coalesce(
            (SELECT min(sku_name) FROM clients WHERE sku_name < :first),
            (SELECT min(sku_name) FROM clients WHERE sku_name >= :end))
        UNION ALL
        SELECT CASE WHEN name < :first THEN coalesce(
                (SELECT min(sku_name) FROM clients WHERE sku_name > name AND sku_name < :first),
                (SELECT min(sku_name) FROM clients WHERE sku_name >= :end))
            ELSE (SELECT min(sku_name) FROM clients WHERE sku_name > name) END
        FROM names WHERE name IS NOT NULL
    )
    SELECT name FROM names WHERE name LIKE :pattern ESCAPE '\\'
    """
)


async def _named_skus(conn: AsyncConnection, search: ClientSearch) -> list[str]:
    """The catalogue SKU names (not UNKNOWN_SKUS) that `search` matches."""
    first, end = UNKNOWN_SKUS
    pattern = f"%{escape_like(search.term)}%"
    found = await conn.execute(_NAMED_SKUS, {"first": first, "end": end, "pattern": pattern})
    return list(found.scalars())


async def _rowids_of_skus(
    conn: AsyncConnection, clients: Any, names: list[str], limit: int
) -> list[int]:
    """Up to `limit` rowids of clients of these SKU names (through the SKU sort index)."""
    rowid: ColumnElement[Any] = literal_column(f"{clients.name}.rowid")
    query = select(rowid).where(clients.c.sku_name.in_(names)).limit(limit)
    return list((await conn.execute(query)).scalars())
