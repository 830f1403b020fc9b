"""The driver-level batch write: same results as a plain model, same stored formats."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import uuid
from collections import Counter
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text

from kmsgate.store import database
from kmsgate.store.activation_batch import (
    SQLITE_ROWS_PER_INSERT,
    SqliteBatchWriter,
    _machine_months,
)
from kmsgate.store.activation_fold import (
    NATIVE_VALUES,
    SQLITE_RAW_VALUES,
    SQLITE_VALUES,
    DriverValues,
    fold,
)
from kmsgate.store.database import FOLD_PART, Store
from kmsgate.store.drafts import draft_of as draft_of_record
from kmsgate.store.drafts import record_of
from kmsgate.store.errors import StoreError, StoreUnavailable
from kmsgate.store.records import ActivationRecord
from kmsgate.store.schema import activation_hours, activations, clients, counters
from tests.support.records import T0, make_draft, make_record

CMIDS = [uuid.UUID(int=n * 0x1111_0000_0000_0000_0000_0000_0001) for n in range(1, 6)]


@dataclass
class ModelClient:
    """What one client row must hold after a sequence of batches."""

    first: datetime
    last: datetime
    count: int
    latest: ActivationRecord


def apply(model: dict[uuid.UUID, ModelClient], batch: list[ActivationRecord]) -> None:
    """The documented rules: newest request wins (later record on ties), earliest first_seen."""
    for rec in batch:
        cmid = rec.client_machine_id
        if cmid is None:
            continue
        seen = model.get(cmid)
        if seen is None:
            model[cmid] = ModelClient(rec.time, rec.time, 1, rec)
            continue
        seen.count += 1
        seen.first = min(seen.first, rec.time)
        if rec.time >= seen.last:
            seen.last, seen.latest = rec.time, rec


records = st.builds(
    lambda cmid, minutes, name, sku, address, status, protocol, epid, ids, result: make_record(
        client_machine_id=cmid,
        # Any offset is fine: the store keeps UTC (and the model compares aware times).
        time=(T0 + timedelta(minutes=minutes)).astimezone(timezone(timedelta(hours=-5))),
        machine_name=name,
        sku_name=sku,
        address=address,
        license_status=status,
        protocol=protocol,
        epid=epid,
        sku_id=ids,
        application_id=ids,
        kms_id=ids,
        result=result,
    ),
    st.sampled_from([*CMIDS, None]),
    st.integers(-3, 3),  # few distinct times: ties across batches are common
    st.sampled_from(["PC-1", "PC-2", "Lab Ü"]),
    st.sampled_from(["Windows 10/11 Pro", "Office LTSC 2021"]),
    st.sampled_from(["192.0.2.1", "2001:db8::5"]),
    st.sampled_from([None, 1, 2, 5]),
    st.sampled_from([None, 4, 6]),
    st.sampled_from([None, "06401-00206-271-298329-03-1033-9600.0000-0452017"]),
    st.sampled_from([None, uuid.UUID("2de67392-b7a7-462a-b1ca-108dd189f588")]),
    st.sampled_from(["activated", "refused"]),
)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(batches=st.lists(st.lists(records, min_size=1, max_size=8), min_size=1, max_size=4))
async def test_batches_match_the_model(store: Store, batches: list[list[ActivationRecord]]) -> None:
    async with store.engine.begin() as conn:  # hypothesis reuses the store: start empty
        for table in ("activations", "clients", "counters", "activation_hours", "product_counts"):
            await conn.execute(text(f"DELETE FROM {table}"))
    model: dict[uuid.UUID, ModelClient] = {}
    for batch in batches:
        await store.record_activations(batch)
        apply(model, batch)

    for cmid, want in model.items():
        got = await store.get_client(cmid)
        assert got is not None
        rec = want.latest
        assert (got.first_seen, got.last_seen, got.request_count) == (
            want.first,
            want.last,
            want.count,
        )
        assert (got.machine_name, got.sku_name, got.last_address, got.last_epid) == (
            rec.machine_name,
            rec.sku_name,
            rec.address,
            rec.epid,
        )
        assert (got.license_status, got.last_protocol) == (rec.license_status, rec.protocol)
        assert (got.sku_id, got.application_id, got.kms_id) == (
            rec.sku_id,
            rec.application_id,
            rec.kms_id,
        )
    everything = [rec for batch in batches for rec in batch]
    stats = await store.stats(T0)
    assert stats.clients == len(model)
    assert stats.activations == len(everything)
    assert stats.refusals == sum(rec.result == "refused" for rec in everything)
    page = await store.list_clients(limit=10)
    assert sorted(c.cmid for c in page.items) == sorted(model)


async def test_stored_values_compare_equal_in_sqlalchemy_terms(store: Store) -> None:
    """Equality filters bind values through SQLAlchemy's types: they only match when the
    driver-level path stored exactly the same representation (times, UUIDs)."""
    when = datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    rec = make_record(time=when)
    await store.record_activations([rec])
    async with store.engine.connect() as conn:
        found = await conn.execute(
            select(func.count())
            .select_from(clients)
            .where(
                clients.c.cmid == rec.client_machine_id,
                clients.c.first_seen == when,
                clients.c.last_seen == when,
                clients.c.sku_id == rec.sku_id,
                clients.c.application_id == rec.application_id,
                clients.c.kms_id == rec.kms_id,
            )
        )
        assert found.scalar_one() == 1
        found = await conn.execute(
            select(func.count())
            .select_from(activations)
            .where(
                activations.c.time == when,
                activations.c.cmid == rec.client_machine_id,
                activations.c.sku_id == rec.sku_id,
            )
        )
        assert found.scalar_one() == 1


def test_sqlite_values_use_sqlalchemys_text_formats() -> None:
    when = datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC)  # padded year, zero microseconds
    cmid = uuid.UUID("2de67392-b7a7-462a-b1ca-108dd189f588")
    batch = fold([make_draft(time=when, client_machine_id=cmid)], SQLITE_VALUES)
    row: tuple[Any, ...] = batch.activation_rows[0]
    assert row[0] == "0999-01-02 03:04:05.000000"
    assert row[1] == "2de67392b7a7462ab1ca108dd189f588"
    assert batch.client_rows()[0][0] == row[1]


async def test_naive_times_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.record_activations([make_record(time=datetime(2024, 1, 1))])


async def _count(store: Store, query: Any) -> Any:
    async with store.engine.connect() as conn:
        return (await conn.execute(query)).scalar_one()


async def _activations_counter(store: Store) -> Any:
    return await _count(store, select(counters.c.value).where(counters.c.name == "activations"))


async def test_a_batch_of_several_parts_matches_the_model(store: Store) -> None:
    # More rows than SQLITE_ROWS_PER_INSERT twice over: SQLite writes them in three parts.
    total = 2 * SQLITE_ROWS_PER_INSERT + 7
    batch = [
        make_record(client_machine_id=CMIDS[i % 3], time=T0 + timedelta(seconds=i))
        for i in range(total)
    ]
    model: dict[uuid.UUID, ModelClient] = {}
    apply(model, batch)
    await store.record_activations(batch)
    assert await _count(store, select(func.count()).select_from(activations)) == total
    async with store.engine.connect() as conn:
        stored = {
            row.cmid: row
            for row in await conn.execute(
                select(clients.c.cmid, clients.c.request_count, clients.c.last_seen)
            )
        }
        hours = (
            await conn.execute(select(activation_hours.c.hour, activation_hours.c.count))
        ).all()
    assert {cmid: (row.request_count, row.last_seen) for cmid, row in stored.items()} == {
        cmid: (client.count, client.last) for cmid, client in model.items()
    }
    assert hours == [(T0.replace(minute=0, second=0, microsecond=0), total)]
    assert await _activations_counter(store) == total


async def test_a_failing_part_leaves_nothing_of_its_batch(store: Store) -> None:
    await store.record_activations([make_record(client_machine_id=CMIDS[0])])
    drafts = [make_draft(client_machine_id=CMIDS[1]) for _ in range(2 * SQLITE_ROWS_PER_INSERT)]
    broken = list(drafts[-1])
    broken[6] = None  # sku_name is NOT NULL: the last part fails, after two parts went in
    drafts.append(tuple(broken))  # type: ignore[arg-type]
    with pytest.raises(StoreError) as raised:
        await store.record_drafts(drafts)
    assert not isinstance(raised.value, StoreUnavailable)  # the writer isolates such a record
    assert await _count(store, select(func.count()).select_from(activations)) == 1
    assert await _count(store, select(func.count()).select_from(clients)) == 1
    assert await _activations_counter(store) == 1
    # The connection is still good for the next batch.
    await store.record_drafts(drafts[:-1])
    assert await _count(store, select(func.count()).select_from(activations)) == 1 + len(drafts) - 1


@given(
    order=st.permutations(range(12)),
    cmids=st.lists(st.sampled_from([*CMIDS[:3], None]), min_size=12, max_size=12),
    seconds=st.lists(st.integers(0, 4), min_size=12, max_size=12),
)
def test_fold_in_and_out_of_time_order_agree(
    order: list[int], cmids: list[uuid.UUID | None], seconds: list[int]
) -> None:
    # Times in arrival order take fold's fast path; any other order its record-by-record one.
    drafts = [
        make_draft(client_machine_id=cmid, time=T0 + timedelta(seconds=s), machine_name=f"PC-{i}")
        for i, (cmid, s) in enumerate(zip(cmids, sorted(seconds), strict=True))
    ]
    shuffled = [drafts[i] for i in order]
    for batch in (drafts, shuffled):
        folded = fold(batch, SQLITE_VALUES)
        model: dict[uuid.UUID, ModelClient] = {}
        apply(model, [record_of(d) for d in batch])
        assert {row[0]: (row[7], row[8], row[9], row[1]) for row in folded.client_rows()} == {
            cmid.hex: (
                SQLITE_VALUES.times([_micros(c.first)])[0],
                SQLITE_VALUES.times([_micros(c.last)])[0],
                c.count,
                c.latest.machine_name,
            )
            for cmid, c in model.items()
        }


def _micros(when: datetime) -> int:
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


@pytest.mark.parametrize("raw", [False, True], ids=["text-rows", "raw-rows"])
@given(
    spec=st.lists(
        st.tuples(
            st.integers(-2, 2),  # seconds around an hour's end
            st.sampled_from(["node-a", "node-b"]),
            st.sampled_from([*CMIDS[:2], None]),
            st.sampled_from(["activated", "refused"]),
            st.sampled_from(["PC-1", "PC-2"]),
        ),
        min_size=1,
        max_size=10,
    ),
)
def test_hours_and_licence_rows_match_a_record_by_record_count(
    raw: bool, spec: list[tuple[int, str, uuid.UUID | None, str, str]]
) -> None:
    # One node within one hour takes the hours' shortcut; the seconds cross 10:00 otherwise.
    hour_end = datetime(2026, 1, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    records = [
        make_record(
            time=hour_end + timedelta(seconds=s), node=node, client_machine_id=cmid,
            result=result, hresult=0 if result == "activated" else 5, sku_name=name,
        )
        for s, node, cmid, result, name in spec
    ]  # fmt: skip
    driver = SQLITE_RAW_VALUES if raw else SQLITE_VALUES
    batch = fold([draft_of_record(r) for r in records], driver)
    want_hours: dict[tuple[datetime, str], int] = {}
    want_months: dict[tuple[str, str, str], str] = {}
    for rec in records:
        key = (rec.time.replace(minute=0, second=0, microsecond=0), rec.node)
        want_hours[key] = want_hours.get(key, 0) + 1
        if rec.result == "activated" and rec.client_machine_id is not None:
            assert rec.sku_id is not None
            month = rec.time.strftime("%Y-%m")
            want_months.setdefault((month, rec.sku_id.hex, rec.client_machine_id.hex), rec.sku_name)
    assert batch.hours == want_hours
    # What the writer stores: the fold's licence rows (the C fold's), else made from the rows.
    got = batch.machine_months
    if got is None:
        got = {(m, s, c): n for m, s, c, n in _machine_months(batch.activation_rows, raw=raw)}
    assert got == want_months


@pytest.mark.parametrize(
    "driver",
    [SQLITE_VALUES, SQLITE_RAW_VALUES, NATIVE_VALUES],
    ids=["sqlite", "sqlite-raw", "native"],
)
@given(
    cmids=st.lists(st.sampled_from([*CMIDS[:3], None]), min_size=2, max_size=14),
    data=st.data(),
    cut=st.integers(1, 13),
)
def test_folding_in_parts_equals_folding_at_once(
    driver: DriverValues, cmids: list[uuid.UUID | None], data: st.DataObject, cut: int
) -> None:
    # Any order of times, ties included: the later part wins a tie, as the later record does.
    drafts = [
        make_draft(
            client_machine_id=cmid,
            time=T0 + timedelta(minutes=30 * data.draw(st.integers(0, 3))),
            machine_name=f"PC-{i}",
            node=data.draw(st.sampled_from(["node-a", "node-b"])),
            result=data.draw(st.sampled_from(["activated", "refused"])),
        )
        for i, cmid in enumerate(cmids)
    ]
    cut = min(cut, len(drafts) - 1)
    whole = fold(drafts, driver)
    parts = fold(drafts[:cut], driver)
    parts.extend(fold(drafts[cut:], driver))
    assert parts.activation_rows == whole.activation_rows
    assert parts.client_rows() == whole.client_rows()
    assert (parts.counters, parts.hours, parts.products, parts.machine_months) == (
        whole.counters,
        whole.hours,
        whole.products,
        whole.machine_months,
    )


async def test_the_event_loop_runs_between_the_parts_of_a_fold(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large batch is folded a part at a time: KMS answers are not held behind all of it."""
    turns = 0
    seen_at_fold: list[int] = []

    async def tick() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    def counting_fold(drafts: Any, driver: Any) -> Any:
        seen_at_fold.append(turns)
        return fold(drafts, driver)

    monkeypatch.setattr(database, "fold", counting_fold)
    drafts = [make_draft(client_machine_id=CMIDS[i % 3]) for i in range(2 * FOLD_PART + 1)]
    ticker = asyncio.create_task(tick())
    try:
        await store.record_drafts(drafts)
    finally:
        ticker.cancel()
    assert len(seen_at_fold) == 3
    assert seen_at_fold[0] < seen_at_fold[1] < seen_at_fold[2]
    assert await _count(store, select(func.count()).select_from(activations)) == len(drafts)


async def test_a_renewal_names_only_the_searchable_columns_that_changed(tmp_path: Path) -> None:
    """Naming machine_name, sku_name or last_address in an UPDATE runs the search trigger
    (and rewrites an index for the first two): a renewal names them only when they change."""
    path = tmp_path / "kmsgate.db"
    await (await Store.open(f"sqlite:///{path}")).close()
    writer = SqliteBatchWriter()
    cmid = uuid.uuid4()
    statements: list[str] = []

    def write(minutes: int, name: str, address: str) -> None:
        draft = make_draft(
            time=T0 + timedelta(minutes=minutes),
            client_machine_id=cmid,
            machine_name=name,
            address=address,
        )
        with closing(sqlite3.connect(path, isolation_level=None)) as db:
            db.set_trace_callback(statements.append)
            db.execute("BEGIN IMMEDIATE")
            for part in writer.parts(fold([draft], SQLITE_VALUES)):
                part(db)
            db.execute("COMMIT")

    def update() -> str:
        # The trace repeats a statement SQLite prepared again (after loading the FTS tables).
        found = [sql for sql in statements if sql.startswith("UPDATE clients")]
        statements.clear()
        assert len(set(found)) == 1
        return found[0]

    write(0, "PC-1", "192.0.2.1")
    statements.clear()
    write(1, "PC-1", "192.0.2.1")
    renewal = update()
    assert "last_seen" in renewal
    assert not {"machine_name", "sku_name", "last_address"} & set(re.findall(r"\w+", renewal))
    write(2, "PC-1", "192.0.2.9")
    assert "last_address" in update()
    write(3, "PC-2", "192.0.2.9")
    moved = set(re.findall(r"\w+", update()))
    assert "machine_name" in moved
    assert "last_address" not in moved


@given(
    products=st.lists(
        st.tuples(st.sampled_from(["Windows", "Office 2016", ""]), st.sampled_from(["A", "B"])),
        min_size=1,
        max_size=12,
    )
)
def test_product_counts_are_per_family_and_name(products: list[tuple[str, str]]) -> None:
    # One family in a batch takes a shortcut; several count (family, name) pairs.
    drafts = [make_draft(product_family=family, sku_name=name) for family, name in products]
    for driver in (SQLITE_VALUES, SQLITE_RAW_VALUES, NATIVE_VALUES):
        assert fold(drafts, driver).products == dict(Counter(products))
