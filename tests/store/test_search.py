"""SQLite client search through the FTS5 trigram index: migration, triggers, exact results."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import random
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import event, text
from sqlalchemy.engine import Connection

from kmsgate.store import migrate
from kmsgate.store import search as store_search
from kmsgate.store.database import Store
from kmsgate.store.engine import make_engine
from kmsgate.store.listings import ClientSort
from kmsgate.store.records import ClientRow
from kmsgate.store.search import FTS_TABLE
from tests.support.records import T0, make_record

SORTS: tuple[ClientSort, ...] = get_args(ClientSort)
ORDERS = [(sort, descending) for sort in SORTS for descending in (True, False)]
TRIGGERS = {f"{FTS_TABLE}_insert", f"{FTS_TABLE}_delete", f"{FTS_TABLE}_update"}
PAGE = 7

# Names with LIKE wildcards, quotes, backslashes, case pairs beyond ASCII, non-BMP text.
NAMES = [
    "DESKTOP-4F2K9QZ",
    "desktop-a1b2c3",
    "LAPTOP-Ab12",
    "ACCT-PC-00042",
    "École-Salle-12",
    "ÉCOLE-salle-7",
    "x_100%",
    "50%_off",
    "back\\slash-PC",
    'quo"te-PC',
    '"""',
    "Straße-1",
    "STRASSE-2",
    "KELVIN-\u212a",
    "İstanbul-03",
    "🙂-kiosk",
    "会議室-PC",
    "a b  c",
    "WS0001234",
    "ab",
]
SKUS = [
    "Windows 10/11 Pro",
    "Office LTSC Professional Plus 2021",
    "Windows Server 2022 Standard",
    "Büro Édition",
    # Made-up names (catalog.product_name for SKU ids it does not know): in the index.
    "unknown (6f1d2c3b-0000-4a5b-8c9d-00000000abcd)",
    "unknown",
    # Names sorting right around the made-up ones: matched by name.
    "unknowable Pro",
    "unknowo",
    "vNext Edition",
]
ADDRESSES = ["10.1.2.3", "10.12.34.5", "110.12.34.9", "192.0.2.10", "2001:db8::1", "fe80::AbCd"]
TERMS = [
    "desk",
    "DESK",
    "DeSkToP-",
    "top",
    "pc-",
    "école",
    "ÉCOLE",
    "École",
    "ecole",
    "salle",
    "%",
    "_1",
    "x_1",
    "0%_",
    "\\",
    "k\\s",
    "back\\",
    '"',
    'quo"',
    '""',
    '"""',
    "straße",
    "STRASSE",
    "ß",
    "kelvin",
    "n-\u212a",
    "n-k",
    "ist",
    "İst",
    "🙂",
    "🙂-k",
    "会議",
    "会議室",
    "10.",
    "10.1",
    "10.12",
    "0.1",
    "12.34",
    "2001:",
    "DB8",
    "fe80::ab",
    "::1",
    "a b",
    "b  c",
    "pro",
    "Plus 2021",
    "büro",
    "BÜRO",
    "zz-no-such-client",
    "unknown",
    "UNKNOWN (6f1d",
    "abcd)",
    "nown",
    "unknowa",
    "unknowo",
    "next",
    "ab",
    "x",
    "00042",
]


def ascii_lower(value: str) -> str:
    """SQLite LIKE's case folding: ASCII letters only."""
    return "".join(chr(ord(ch) + 32) if "A" <= ch <= "Z" else ch for ch in value)


def expected(fleet: list[ClientRow], term: str, sort: str, descending: bool) -> list[ClientRow]:
    """The search by brute force: name/SKU substring or address prefix, ASCII case-folded."""
    wanted = ascii_lower(term.strip())

    def hit(c: ClientRow) -> bool:
        return (
            wanted in ascii_lower(c.machine_name)
            or wanted in ascii_lower(c.sku_name)
            or ascii_lower(c.last_address).startswith(wanted)
        )

    return sorted(
        (c for c in fleet if hit(c)),
        key=lambda c: (getattr(c, sort), c.cmid),
        reverse=descending,
    )


async def walk(store: Store, term: str, sort: ClientSort, descending: bool) -> list[ClientRow]:
    """Every page forward, then back again by prev cursors, which must give the same pages."""
    pages: list[list[ClientRow]] = []
    prev: str | None = None
    cursor: str | None = None
    for _ in range(200):
        page = await store.list_clients(
            search=term, sort=sort, descending=descending, cursor=cursor, limit=PAGE
        )
        pages.append(page.items)
        prev, cursor = page.prev_cursor, page.next_cursor
        if cursor is None:
            break
    else:
        raise AssertionError("paging did not end")
    for index in range(len(pages) - 2, -1, -1):
        assert prev is not None
        page = await store.list_clients(
            search=term, sort=sort, descending=descending, cursor=prev, limit=PAGE
        )
        assert [c.cmid for c in page.items] == [c.cmid for c in pages[index]]
        prev = page.prev_cursor
    assert prev is None
    return [c for p in pages for c in p]


def fleet_records(count: int) -> list[Any]:
    """Clients over NAMES/SKUS/ADDRESSES with many ties in every sort key."""
    rng = random.Random(5)
    records = []
    for i in range(count):
        cmid = uuid.UUID(int=rng.getrandbits(128), version=4)
        record = make_record(
            client_machine_id=cmid,
            machine_name=NAMES[i % len(NAMES)] if i % 3 else f"{NAMES[i % len(NAMES)]}-{i}",
            sku_name=SKUS[i % len(SKUS)],
            address=ADDRESSES[i % len(ADDRESSES)],
            time=T0 + timedelta(hours=i % 5),
        )
        records += [replace(record, time=record.time + timedelta(seconds=n)) for n in range(i % 3)]
        records.append(record)
    return records


class StatementLog:
    """The SQL an engine sends, to tell which search path answered."""

    def __init__(self, store: Store) -> None:
        self.sql: list[str] = []
        event.listen(store.engine.sync_engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.sql.append(statement)

    def count(self, fragment: str) -> int:
        return sum(fragment in s for s in self.sql)


async def fts_state(store: Store) -> list[tuple[Any, ...]]:
    """The index's stored b-tree rows: any write to the FTS5 index changes them."""
    async with store.engine.connect() as conn:
        rows = await conn.exec_driver_sql(f"SELECT id, block FROM {FTS_TABLE}_data ORDER BY id")
        return [tuple(r) for r in rows]


async def run_on(url: str, fn: Any) -> Any:
    """fn(sync connection) in one committed transaction on its own engine."""
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


async def integrity_check(store: Store) -> None:
    """FTS5 compares the index with the clients table (rank 1: external content too)."""
    async with store.engine.begin() as conn:
        await conn.exec_driver_sql(
            f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rank) VALUES ('integrity-check', 1)"
        )


async def drop_index(store: Store) -> None:
    """What a SQLite without FTS5 trigram leaves: migrations 0003 and 0012 skipped theirs."""
    async with store.engine.begin() as conn:
        for trigger in sorted(TRIGGERS):
            await conn.exec_driver_sql(f"DROP TRIGGER {trigger}")
        await conn.exec_driver_sql(f"DROP TABLE {FTS_TABLE}")
        await conn.exec_driver_sql(f"DROP VIEW {FTS_TABLE}_source")


async def search_objects(url: str) -> dict[str, str]:
    """Name and type of every schema object belonging to the FTS index."""

    def read(conn: Connection) -> dict[str, str]:
        rows = conn.execute(
            text(
                "SELECT name, type FROM sqlite_master"
                " WHERE name LIKE 'clients\\_search%' ESCAPE '\\'"
            )
        )
        return {str(name): str(kind) for name, kind in rows.all()}

    return dict(await run_on(url, read))


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/kmsgate.db"


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    opened = await Store.open(url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture(scope="module")
def fleet_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One seeded database shared by the read-only tests of this module."""
    path = tmp_path_factory.mktemp("fleet") / "kmsgate.db"
    fleet_db = f"sqlite:///{path}"

    async def seed() -> None:
        store = await Store.open(fleet_db)
        try:
            await store.record_activations(fleet_records(240))
        finally:
            await store.close()

    asyncio.run(seed())
    return fleet_db


@pytest.fixture
async def fleet(fleet_url: str) -> AsyncIterator[tuple[Store, list[ClientRow]]]:
    """The shared fleet's store and all of its clients."""
    opened = await Store.open(fleet_url)
    try:
        clients = (await opened.list_clients(limit=1000)).items
        assert len(clients) == 240
        yield opened, clients
    finally:
        await opened.close()


# (RARE_HITS, windows) that steer searches down each path of store.search.sqlite_search:
# "rare" reads the index's hits directly, "walk" filters the sort order's first rows,
# "narrow" misses both and sorts the prefix-exact candidates (or scans, without the index).
PATHS = {"rare": (5_000, 5_000), "walk": (0, 40), "narrow": (0, 1), "mixed": (10, 3)}
RARE_SQL = "clients.rowid IN (?"
NARROW_SQL = "clients.rowid IN (SELECT clients_search.rowid"


def steer(patch: pytest.MonkeyPatch, path: str) -> None:
    rare_hits, window = PATHS[path]
    patch.setattr(store_search, "RARE_HITS", rare_hits)
    patch.setattr(store_search, "SEARCH_WINDOW", window)
    patch.setattr(store_search, "INDEXED_WINDOW", window)


@pytest.fixture
def narrow_window(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One-row windows and no rare path: pages with matches reach the last step."""
    steer(monkeypatch, "narrow")
    yield


# ------------------------------------------------------------------ migration


def test_migration_creates_index_and_triggers(url: str) -> None:
    migrate.upgrade(url)
    objects = asyncio.run(search_objects(url))
    assert objects[FTS_TABLE] == "table"
    assert {n for n, kind in objects.items() if kind == "trigger"} == TRIGGERS
    migrate.downgrade(url, "0002")
    assert asyncio.run(search_objects(url)) == {}


async def test_migration_indexes_existing_clients(url: str) -> None:
    engine = make_engine(url)
    try:
        await migrate.run_upgrade(engine, "0002")
    finally:
        await engine.dispose()
    names = ["Lab-Öst-01", "LAB-west-02", "office-1"]

    def insert(conn: Connection) -> None:
        # Raw SQL with the columns of revision 0002: schema.py may have grown since.
        for n, name in enumerate(names):
            conn.execute(
                text(
                    "INSERT INTO clients (cmid, machine_name, sku_name, first_seen, last_seen,"
                    " request_count, last_address) VALUES (:cmid, :name, 'Windows 10/11 Pro',"
                    " '2024-05-06 12:00:00.000000', '2024-05-06 12:00:00.000000', 1, :address)"
                ),
                {"cmid": uuid.uuid4().hex, "name": name, "address": f"10.7.0.{n}"},
            )

    await run_on(url, insert)
    store = await Store.open(url)
    try:
        await integrity_check(store)
        log = StatementLog(store)
        with pytest.MonkeyPatch.context() as patch:
            steer(patch, "narrow")
            found = await store.list_clients(search="lab-", sort="machine_name", descending=False)
            assert [c.machine_name for c in found.items] == ["LAB-west-02", "Lab-Öst-01"]
            found = await store.list_clients(search="10.7.0.2")
            assert [c.machine_name for c in found.items] == ["office-1"]
        assert log.count(NARROW_SQL) == 2  # both found through the index
    finally:
        await store.close()


def load_migration() -> ModuleType:
    path = migrate.MIGRATIONS_DIR / "versions" / "0003_sqlite_search.py"
    spec = importlib.util.spec_from_file_location("migration_0003", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_migration_skips_the_index_without_the_tokenizer(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    migrate.upgrade(url, "0002")
    migration = load_migration()

    def attempt(conn: Connection) -> tuple[bool, bool, int]:
        missing = migration._create_index(conn, tokenizer="no_such_tokenizer")
        # The failed attempt is rolled back to its savepoint: the transaction goes on.
        created = migration._create_index(conn)
        return missing, created, conn.execute(text("SELECT count(*) FROM clients")).scalar_one()

    with caplog.at_level(logging.WARNING, logger="kmsgate.store"):
        assert asyncio.run(run_on(url, attempt)) == (False, True, 0)
    assert "client search will scan" in caplog.text
    assert "no_such_tokenizer" in caplog.text


async def index_terms(store: Store) -> set[str]:
    """The trigrams the index holds (FTS5's vocabulary table over it)."""
    async with store.engine.begin() as conn:
        await conn.exec_driver_sql(
            f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.vocab USING fts5vocab(main, {FTS_TABLE}, row)"
        )
        return {str(term) for (term,) in await conn.exec_driver_sql("SELECT term FROM vocab")}


async def test_catalogue_sku_names_stay_out_of_the_index(store: Store) -> None:
    # A third of a new client's trigrams were its SKU name's: catalogue names are few and
    # are matched by name instead; names a client can make up stay in the index.
    await store.record_activations(
        [
            make_record(machine_name="PC-1", sku_name="Office LTSC Professional Plus 2021"),
            make_record(
                machine_name="PC-2", sku_name="unknown (00000000-feed-4bee-8000-c0ffee000001)"
            ),
        ]
    )
    await integrity_check(store)
    terms = await index_terms(store)
    assert {"pc-", "unk", "fee", "c0f"} <= terms
    assert not {"lts", "ltsc", "pro", "lus"} & terms
    found = await store.list_clients(search="LTSC pro")
    assert [c.machine_name for c in found.items] == ["PC-1"]
    found = await store.list_clients(search="c0ffee")
    assert [c.machine_name for c in found.items] == ["PC-2"]


async def test_named_skus_skip_the_made_up_names(store: Store) -> None:
    # Clients choose SKU ids, so made-up names are as many as they like: the scan of catalogue
    # names must not read them one by one, nor return them.
    made_up = [f"unknown ({uuid.UUID(int=n)})" for n in range(300)]
    named = ["Office LTSC Professional Plus 2021", "Windows 10/11 Pro", "vNext Edition"]
    await store.record_activations(
        [make_record(sku_name=name) for name in [*made_up, *named, "unknown"]]
    )
    async with store.engine.connect() as conn:
        assert await store_search._named_skus(conn, store_search.ClientSearch("", "sqlite")) == [
            "Office LTSC Professional Plus 2021",
            "Windows 10/11 Pro",
            "vNext Edition",
        ]
        assert await store_search._named_skus(conn, store_search.ClientSearch("PRO", "sqlite")) == [
            "Office LTSC Professional Plus 2021",
            "Windows 10/11 Pro",
        ]
    async with store.engine.connect() as conn:
        steps = await conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN " + str(store_search._NAMED_SKUS),
            {"first": "unknown", "end": "unknowo", "pattern": "%"},
        )
        plan = " | ".join(str(row[-1]) for row in steps)
    # Every seek goes through the SKU sort index: none scans the clients table.
    assert "ix_clients_sku_name_cmid" in plan
    assert "SCAN clients" not in plan


def test_migration_0012_goes_back_to_all_three_texts(url: str) -> None:
    async def record() -> None:
        store = await Store.open(url)
        try:
            await store.record_activations(
                [make_record(machine_name="PC-9", sku_name="Office LTSC Professional Plus 2021")]
            )
        finally:
            await store.close()

    def sku_matches(conn: Connection) -> int:
        conn.execute(
            text(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rank) VALUES ('integrity-check', 1)")
        )
        query = f"SELECT count(*) FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH 'sku_name : ltsc'"
        return int(conn.execute(text(query)).scalar_one())

    async def search_again() -> list[str]:
        store = await Store.open(url)
        try:
            await integrity_check(store)
            return [c.machine_name for c in (await store.list_clients(search="ltsc")).items]
        finally:
            await store.close()

    asyncio.run(record())
    migrate.downgrade(url, "0011")
    # 0003's index again: every SKU name in it, no view.
    assert asyncio.run(run_on(url, sku_matches)) == 1
    assert f"{FTS_TABLE}_source" not in asyncio.run(search_objects(url))
    assert asyncio.run(search_again()) == ["PC-9"]  # upgraded once more on opening


# ------------------------------------------------------------------ triggers


async def test_writes_keep_the_index_in_step(store: Store, url: str, narrow_window: None) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    await store.record_activations(
        [
            make_record(client_machine_id=first, machine_name="ALPHA-one", address="10.0.0.1"),
            make_record(client_machine_id=second, machine_name="BRAVO-two", address="10.0.0.2"),
            make_record(machine_name="filler-1"),
            make_record(machine_name="filler-2"),
        ]
    )

    async def found(term: str) -> set[str]:
        page = await store.list_clients(search=term, limit=50)
        return {c.machine_name for c in page.items}

    assert await found("alpha") == {"ALPHA-one"}
    # A rename, a new address and a new SKU arrive with a newer request.
    later = T0 + timedelta(hours=1)
    await store.record_activations(
        [
            make_record(
                client_machine_id=first,
                machine_name="CHARLIE-renamed",
                address="172.16.9.9",
                sku_name="Office Visio LTSC Pro 2021",
                time=later,
            )
        ]
    )
    await integrity_check(store)
    assert await found("alpha") == set()
    assert await found("charlie") == {"CHARLIE-renamed"}
    assert await found("10.0.0.") == {"BRAVO-two"}
    assert await found("172.16.") == {"CHARLIE-renamed"}
    assert await found("visio") == {"CHARLIE-renamed"}
    # An older request from another node must not take the name back, nor the index.
    await store.record_activations(
        [make_record(client_machine_id=first, machine_name="ALPHA-one", time=T0)]
    )
    assert await found("alpha") == set()
    # Case-only renames, direct SQL updates and deletes go through the triggers too.
    async with store.engine.begin() as conn:
        await conn.exec_driver_sql(
            "UPDATE clients SET machine_name = 'bravo-TWO' WHERE cmid = ?", (second.hex,)
        )
        await conn.exec_driver_sql("DELETE FROM clients WHERE machine_name = 'filler-1'")
    await integrity_check(store)
    assert await found("bravo-two") == {"bravo-TWO"}
    assert await found("filler") == {"filler-2"}
    # VACUUM may renumber the rowids of a table without INTEGER PRIMARY KEY; it must not.
    with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as raw:
        raw.execute("VACUUM")
    await integrity_check(store)
    assert await found("charlie") == {"CHARLIE-renamed"}


async def test_a_renewal_does_not_write_the_index(store: Store, url: str) -> None:
    cmid = uuid.uuid4()
    await store.record_activations(
        [make_record(client_machine_id=cmid, machine_name="PC-1", address="10.5.5.5")]
    )
    before = await fts_state(store)
    # A renewal changes times, counts and status, never the searchable text.
    await store.record_activations(
        [
            make_record(
                client_machine_id=cmid,
                machine_name="PC-1",
                address="10.5.5.5",
                time=T0 + timedelta(days=7),
                license_status=1,
                epid=None,
                protocol=5,
            )
        ]
    )
    async with store.engine.begin() as conn:
        # Every column in the SET list, as an upsert writes it: still nothing to index.
        await conn.exec_driver_sql(
            "UPDATE clients SET machine_name = machine_name, sku_name = sku_name,"
            " last_address = last_address, request_count = request_count + 1"
        )
    assert await fts_state(store) == before
    assert (await store.get_client(cmid)).request_count == 3  # type: ignore[union-attr]
    # The check can fail: a changed address does write the index.
    await store.record_activations(
        [
            make_record(
                client_machine_id=cmid,
                machine_name="PC-1",
                address="10.5.5.6",
                time=T0 + timedelta(days=8),
            )
        ]
    )
    assert await fts_state(store) != before
    await integrity_check(store)


# ------------------------------------------------------------------ results


@pytest.mark.slow
@pytest.mark.parametrize("path", ["rare", "narrow"])
@pytest.mark.parametrize(("index", "term"), list(enumerate(TERMS)))
async def test_search_equals_brute_force(
    fleet: tuple[Store, list[ClientRow]],
    index: int,
    term: str,
    path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, everyone = fleet
    steer(monkeypatch, path)
    log = StatementLog(store)
    some = False
    # Two orders per term (one of each direction), every order across the list.
    for sort, descending in ORDERS[index % 5 :: 5]:
        want = expected(everyone, term, sort, descending)
        got = await walk(store, term, sort, descending)
        assert [c.cmid for c in got] == [c.cmid for c in want], (sort, descending)
        some = some or bool(want)
    indexed = len(term) >= store_search.MIN_INDEXED_LENGTH
    assert (log.count("MATCH") > 0) == indexed
    # With the index, results come from the path steered to; without, from window and scan.
    found_by = log.count(RARE_SQL if path == "rare" else NARROW_SQL)
    if not indexed:
        assert found_by == 0
    elif some:
        assert found_by > 0


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS)
async def test_every_path_agrees(fleet: tuple[Store, list[ClientRow]], path: str) -> None:
    store, everyone = fleet
    log = StatementLog(store)
    with pytest.MonkeyPatch.context() as patch:
        steer(patch, path)
        for term in ("desk", "pc-", "10.1", "école", "qz-12", "zz-none"):
            for sort, descending in ORDERS:
                got = await walk(store, term, sort, descending)
                want = expected(everyone, term, sort, descending)
                assert [c.cmid for c in got] == [c.cmid for c in want], (term, sort)
    assert (log.count(RARE_SQL) > 0) == (path in ("rare", "mixed"))
    assert (log.count(NARROW_SQL) > 0) == (path != "rare")


_fleet_text = "".join(NAMES + SKUS + ADDRESSES)


def _flip_case(text: str, flips: list[bool]) -> str:
    return "".join(ch.swapcase() if f else ch for ch, f in zip(text, flips, strict=False))


@st.composite
def search_terms(draw: st.DrawFn) -> str:
    """Pieces of the fleet's text with random case, or arbitrary text."""
    if draw(st.booleans()):
        start = draw(st.integers(0, len(_fleet_text) - 1))
        piece = _fleet_text[start : start + draw(st.integers(1, 8))]
        return _flip_case(piece, draw(st.lists(st.booleans(), min_size=8, max_size=8)))
    alphabet = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
    return draw(st.text(alphabet, min_size=1, max_size=6))


@pytest.mark.slow
@settings(max_examples=80, deadline=None)
@given(
    term=search_terms(),
    order=st.sampled_from(ORDERS),
    path=st.sampled_from(list(PATHS)),
)
def test_any_term_equals_brute_force(
    fleet_url: str, term: str, order: tuple[ClientSort, bool], path: str
) -> None:
    sort, descending = order

    async def check() -> None:
        store = await Store.open(fleet_url, upgrade=False)
        try:
            everyone = (await store.list_clients(limit=1000)).items
            got = await walk(store, term, sort, descending)
        finally:
            await store.close()
        if term.strip():
            assert [c.cmid for c in got] == [
                c.cmid for c in expected(everyone, term, sort, descending)
            ]
        else:
            assert len(got) == len(everyone)  # a blank search is no search

    with pytest.MonkeyPatch.context() as patch:
        steer(patch, path)
        asyncio.run(check())


async def test_nul_in_a_term_scans(
    fleet: tuple[Store, list[ClientRow]], narrow_window: None
) -> None:
    store, _everyone = fleet
    log = StatementLog(store)
    # FTS5 strings cannot hold NUL: such a term takes the scan, whatever LIKE makes of it.
    await store.list_clients(search="desk\x00top")
    assert log.count("MATCH") == 0


# ------------------------------------------------------------------ without the index


async def test_search_without_the_index_scans(store: Store, url: str, narrow_window: None) -> None:
    await store.record_activations(fleet_records(60))
    await drop_index(store)
    assert await search_objects(url) == {}
    # A Store that already looked keeps its answer: this one opens afresh.
    fallback = await Store.open(url)
    try:
        log = StatementLog(fallback)
        await fallback.record_activations([make_record(machine_name="École-new")])
        everyone = (await fallback.list_clients(limit=1000)).items
        assert len(everyone) == 61
        for term in ("desk", "école", "10.12", '"""', "k\\s", "zz-none"):
            for sort, descending in ORDERS[::3]:
                got = await walk(fallback, term, sort, descending)
                want = expected(everyone, term, sort, descending)
                assert [c.cmid for c in got] == [c.cmid for c in want], (term, sort)
        assert log.count("MATCH") == 0
        assert log.count("sqlite_master") == 1  # looked up once per Store
    finally:
        await fallback.close()
