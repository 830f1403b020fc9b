"""RecordDraft: exact both ways with ActivationRecord, checked field by field, and a ring left
by the previous draft shape still written."""

from __future__ import annotations

import marshal
import mmap
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmsgate.recording.inline import InlineWriter
from kmsgate.recording.ring import RecordRing, ring_bytes
from kmsgate.store.activation_fold import NATIVE_VALUES, SQLITE_VALUES, fold
from kmsgate.store.database import Store
from kmsgate.store.drafts import (
    DRAFT_FIELDS,
    DraftError,
    checked_draft,
    draft_of,
    record_of,
)
from tests.store.test_writer import wait_for
from tests.support.records import make_draft, make_record

ids = st.none() | st.uuids()
times = st.datetimes(timezones=st.just(UTC)) | st.datetimes(
    min_value=datetime(1900, 1, 1), timezones=st.just(timezone(timedelta(hours=-7)))
)


@settings(max_examples=300, deadline=None)
@given(
    when=times,
    cmid=ids,
    app=ids,
    sku=ids,
    kms=ids,
    status=st.none() | st.integers(0, 2**32 - 1),
    protocol=st.none() | st.sampled_from([4, 5, 6]),
    hresult=st.integers(0, 2**32 - 1),
    epid=st.none() | st.text(max_size=60),
    name=st.text(max_size=70),
)
def test_a_record_survives_the_draft_exactly(
    when: datetime,
    cmid: uuid.UUID | None,
    app: uuid.UUID | None,
    sku: uuid.UUID | None,
    kms: uuid.UUID | None,
    status: int | None,
    protocol: int | None,
    hresult: int,
    epid: str | None,
    name: str,
) -> None:
    record = make_record(
        time=when, client_machine_id=cmid, application_id=app, sku_id=sku, kms_id=kms,
        license_status=status, protocol=protocol, hresult=hresult, epid=epid,
        machine_name=name, result="refused" if hresult else "activated",
    )  # fmt: skip
    draft = draft_of(record)
    assert len(draft) == DRAFT_FIELDS
    assert checked_draft(marshal.loads(marshal.dumps(draft)), "other-node") == draft
    back = record_of(draft)
    assert back == record  # datetimes compare as instants: the offset may differ
    assert back.time.tzinfo is UTC and back.time == when


@settings(max_examples=200, deadline=None)
@given(when=st.datetimes(timezones=st.just(UTC)))
def test_the_drivers_see_the_records_time(when: datetime) -> None:
    """SQLite gets SQLAlchemy's own text for the instant; asyncpg the datetime itself."""
    draft = make_draft(time=when)
    [row] = fold([draft], SQLITE_VALUES).activation_rows
    assert row[0] == when.replace(tzinfo=None).isoformat(" ", "microseconds")
    [row] = fold([draft], NATIVE_VALUES).activation_rows
    assert row[0] == when and row[0].tzinfo is UTC


def test_hours_and_counters_follow_the_drafts() -> None:
    start = datetime(2026, 12, 3, 9, 59, 59, 999_999, tzinfo=UTC)
    drafts = [
        make_draft(time=start, node="a"),
        make_draft(time=start + timedelta(microseconds=1), node="a"),
        make_draft(time=start + timedelta(hours=1), node="b", result="refused", hresult=5),
    ]
    batch = fold(drafts)
    nine = start.replace(minute=0, second=0, microsecond=0)
    ten = nine + timedelta(hours=1)
    assert batch.hours == {(nine, "a"): 1, (ten, "a"): 1, (ten, "b"): 1}
    assert batch.counters == {
        "activations": 3, "result:activated": 2, "result:refused": 1, "protocol:6": 3,
    }  # fmt: skip


def test_naive_times_have_no_draft() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        draft_of(make_record(time=datetime(2024, 1, 1)))


GOOD = make_draft()


@pytest.mark.parametrize(
    ("draft", "why"),
    [
        ([*GOOD], "typed fields"),  # a list
        ((*GOOD, "x"), "typed fields"),
        ((float(GOOD[0]), *GOOD[1:]), "typed fields"),
        ((True, *GOOD[1:]), "typed fields"),  # bool is no int here
        ((GOOD[0], b"x" * 15, *GOOD[2:]), "not 16 bytes"),
        ((*GOOD[:4], b"x" * 17, *GOOD[5:]), "not 16 bytes"),
        ((*GOOD[:12], "0", *GOOD[13:]), "typed fields"),  # the HRESULT as text
        ((2**62, *GOOD[1:]), "out of range"),
        ((-(2**62), *GOOD[1:]), "out of range"),
    ],
)
def test_a_malformed_draft_is_refused_with_its_reason(draft: Any, why: str) -> None:
    with pytest.raises(DraftError, match=why):
        checked_draft(draft, "n")


def version_1(record_draft: tuple[Any, ...]) -> tuple[Any, ...]:
    """The shape drafts had before microseconds, result and node joined them."""
    (micros, cmid, name, address, app, sku, sku_name, kms, family, status, protocol,
     _result, hresult, epid, _node) = record_draft  # fmt: skip
    return (micros / 1e6, address, cmid, name, app, sku, sku_name, kms, family, status,
            protocol, hresult, epid)  # fmt: skip


def test_a_version_1_draft_is_upgraded_with_the_readers_node() -> None:
    served = make_draft(time=datetime(2026, 11, 30, 8, 0, 0, 250_000, tzinfo=UTC), node="x")
    refused = make_draft(result="refused", hresult=0xC004F042, epid=None, node="x")
    for draft in (served, refused):
        assert checked_draft(version_1(draft), "x") == draft
    assert checked_draft(version_1(served), "y")[-1] == "y"
    broken = (float("nan"), *version_1(served)[1:])
    with pytest.raises(DraftError):
        checked_draft(broken, "x")


async def test_a_ring_left_by_version_1_is_written_at_the_next_start(tmp_path: Path) -> None:
    """An upgrade after a crash: the entries the old version handed over still land."""
    ring_path = tmp_path / "records.ring"
    made = [make_draft(machine_name=f"OLD-{i}", node="node-v1") for i in range(30)]
    with ring_path.open("w+b") as file:
        file.truncate(ring_bytes(1 << 20))
        with mmap.mmap(file.fileno(), 0) as memory:
            view = memoryview(memory)
            ring = RecordRing.create(view, max_entries=1000)
            for draft in made:
                assert ring.append(marshal.dumps(version_1(draft)))
            ring.close()
            view.release()
    store = await Store.open(f"sqlite:///{tmp_path / 'kms.db'}")
    try:
        writer = InlineWriter(store, node="node-v1", flush_interval=0.05, ring_path=ring_path)
        await writer.start()
        await wait_for(lambda: writer.written == 30)
        await writer.close()
        assert writer.dropped == 0
        stored = (await store.list_activations(limit=100)).items
        assert sorted(row.machine_name for row in stored) == sorted(d[2] for d in made)
        assert {row.node for row in stored} == {"node-v1"}
    finally:
        await store.close()


async def test_a_batch_of_every_size_lands_whole(store: Store) -> None:
    """SQLite inserts activations many rows per statement: every remainder still lands."""
    start = datetime(2026, 12, 1, tzinfo=UTC)
    total = 0
    for size in (1, 249, 250, 251, 777):
        drafts = [
            make_draft(time=start + timedelta(seconds=total + i), machine_name=f"PC-{total + i}")
            for i in range(size)
        ]
        await store.record_drafts(drafts)
        total += size
    rows = []
    cursor = None
    while True:
        page = await store.list_activations(limit=500, cursor=cursor)
        rows += page.items
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(rows) == total
    assert sorted(int(r.machine_name[3:]) for r in rows) == list(range(total))
    assert all(r.time == start + timedelta(seconds=int(r.machine_name[3:])) for r in rows)
    assert (await store.stats(start)).activations == total


primitives = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
primitives |= st.binary(max_size=20)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.lists(primitives, min_size=13, max_size=15).map(tuple),
        st.tuples(*(st.sampled_from([value, None, b"", 0, "x"]) for value in GOOD)),
        primitives,
    )
)
def test_whatever_comes_out_of_the_ring_is_a_draft_fold_takes_or_a_drafterror(
    value: object,
) -> None:
    """The reader's one check stands between marshalled bytes and the batch: nothing it
    lets through may break a fold (which would hold the whole batch up)."""
    try:
        draft = checked_draft(value, "n")
    except DraftError:
        return
    for driver in (SQLITE_VALUES, NATIVE_VALUES):
        batch = fold([draft], driver)
        assert len(batch.activation_rows) == 1
        batch.client_rows()
