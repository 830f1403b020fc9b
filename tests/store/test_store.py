"""Store repository functions on SQLite and PostgreSQL: fields, upserts, paging, stats, users."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from kmsgate.store import search as store_search
from kmsgate.store.database import Store
from kmsgate.store.engine import async_url, masked
from kmsgate.store.errors import (
    InvalidCursor,
    StoreError,
    StoreUnavailable,
    UserExists,
    UserNotFound,
)
from kmsgate.store.records import ActivationRecord, ClientRow
from tests.support.records import T0, WIN10_KMS, WIN10_PRO, WINDOWS_APP, make_record

HOUR = timedelta(hours=1)


async def all_clients(store: Store, **kwargs: Any) -> list[ClientRow]:
    """Walk every page forward."""
    items: list[ClientRow] = []
    cursor: str | None = None
    for _ in range(1000):  # bounded: far more pages than any test makes
        page = await store.list_clients(cursor=cursor, **kwargs)
        items += page.items
        cursor = page.next_cursor
        if cursor is None:
            return items
    raise AssertionError("paging did not end")


# ------------------------------------------------------------------ record_activations


async def test_record_stores_every_field(store: Store) -> None:
    cmid = uuid.uuid4()
    record = make_record(client_machine_id=cmid, hresult=0)
    refusal = make_record(
        client_machine_id=None,
        machine_name="",
        sku_id=None,
        sku_name="unknown (00000000-0000-0000-0000-000000000000)",
        application_id=None,
        kms_id=None,
        product_family="",
        license_status=None,
        protocol=None,
        result="refused",
        hresult=0xC004F074,  # above 2**31: must survive a signed 32-bit column
        epid=None,
        node="node-b",
        time=T0 + timedelta(seconds=1),
    )
    await store.record_activations([record, refusal])

    client = await store.get_client(cmid)
    assert client == ClientRow(
        cmid=cmid,
        machine_name="DESKTOP-0001",
        application_id=WINDOWS_APP,
        sku_id=WIN10_PRO,
        sku_name="Windows 10/11 Pro",
        kms_id=WIN10_KMS,
        license_status=2,
        first_seen=T0,
        last_seen=T0,
        request_count=1,
        last_epid=record.epid,
        last_address="192.0.2.10",
        last_protocol=6,
    )
    assert client.last_seen.tzinfo is not None
    assert await store.get_client(uuid.uuid4()) is None

    history = await store.client_history(cmid)
    assert history.total == 1
    [row] = history.items
    assert (row.time, row.cmid, row.machine_name, row.address) == (
        T0,
        cmid,
        "DESKTOP-0001",
        "192.0.2.10",
    )
    assert (row.sku_id, row.sku_name, row.license_status, row.protocol) == (
        WIN10_PRO,
        "Windows 10/11 Pro",
        2,
        6,
    )
    assert (row.result, row.hresult, row.node) == ("activated", 0, "node-a")

    page = await store.list_activations()
    assert page.total == 2
    newest = page.items[0]
    assert newest.cmid is None
    assert newest.hresult == 0xC004F074
    assert (newest.result, newest.node, newest.protocol, newest.sku_id) == (
        "refused",
        "node-b",
        None,
        None,
    )
    # Undecodable requests make no client row.
    assert (await store.list_clients()).total == 1


async def test_times_are_converted_to_utc(store: Store) -> None:
    plus_two = datetime(2024, 5, 6, 16, 30, tzinfo=timezone(timedelta(hours=2)))
    cmid = uuid.uuid4()
    await store.record_activations([make_record(client_machine_id=cmid, time=plus_two)])
    client = await store.get_client(cmid)
    assert client is not None
    assert client.first_seen == datetime(2024, 5, 6, 14, 30, tzinfo=UTC)
    assert client.first_seen.utcoffset() == timedelta(0)


async def test_naive_times_are_rejected(store: Store) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.record_activations([make_record(time=datetime(2024, 1, 1))])
    with pytest.raises(ValueError):
        await store.stats(datetime(2024, 1, 1))
    assert (await store.list_activations()).total == 0


async def test_empty_batch_is_a_no_op(store: Store) -> None:
    await store.record_activations([])
    assert (await store.stats(T0)).activations == 0


async def test_upsert_counts_and_keeps_first_seen(store: Store) -> None:
    cmid = uuid.uuid4()
    first = make_record(client_machine_id=cmid, time=T0, machine_name="OLD-NAME", license_status=1)
    await store.record_activations([first])
    # Same CMID three times in one batch, arriving out of time order.
    later = [
        make_record(client_machine_id=cmid, time=T0 + 3 * HOUR, machine_name="NEW", protocol=5),
        make_record(client_machine_id=cmid, time=T0 + 2 * HOUR, machine_name="MID"),
        make_record(client_machine_id=cmid, time=T0 + HOUR, machine_name="MID0"),
    ]
    await store.record_activations(later)
    client = await store.get_client(cmid)
    assert client is not None
    assert client.request_count == 4
    assert client.first_seen == T0
    assert client.last_seen == T0 + 3 * HOUR
    assert (client.machine_name, client.last_protocol) == ("NEW", 5)

    # A slower node reports an older request afterwards: counted, first_seen moves back,
    # but the latest fields stay with the newest request.
    older = make_record(
        client_machine_id=cmid,
        time=T0 - HOUR,
        machine_name="ANCIENT",
        address="198.51.100.7",
        node="node-b",
    )
    await store.record_activations([older])
    client = await store.get_client(cmid)
    assert client is not None
    assert client.request_count == 5
    assert client.first_seen == T0 - HOUR
    assert client.last_seen == T0 + 3 * HOUR
    assert (client.machine_name, client.last_address) == ("NEW", "192.0.2.10")

    # A newer request updates every latest field.
    newest = make_record(
        client_machine_id=cmid,
        time=T0 + 4 * HOUR,
        machine_name="RENAMED",
        address="203.0.113.9",
        sku_id=None,
        sku_name="Office LTSC 2021",
        application_id=None,
        kms_id=None,
        license_status=5,
        protocol=4,
        epid=None,
    )
    await store.record_activations([newest])
    client = await store.get_client(cmid)
    assert client is not None
    assert (client.machine_name, client.last_address, client.sku_name) == (
        "RENAMED",
        "203.0.113.9",
        "Office LTSC 2021",
    )
    assert (client.sku_id, client.application_id, client.kms_id) == (None, None, None)
    assert (client.license_status, client.last_protocol, client.last_epid) == (5, 4, None)
    assert client.request_count == 6
    stats = await store.stats(T0)
    assert (stats.clients, stats.activations) == (1, 6)
    assert (await store.client_history(cmid)).total == 6


async def test_equal_times_in_a_batch_take_the_later_record(store: Store) -> None:
    cmid = uuid.uuid4()
    await store.record_activations(
        [
            make_record(client_machine_id=cmid, machine_name="FIRST"),
            make_record(client_machine_id=cmid, machine_name="SECOND"),
        ]
    )
    client = await store.get_client(cmid)
    assert client is not None
    assert (client.machine_name, client.request_count) == ("SECOND", 2)


async def test_new_clients_are_counted_once(store: Store) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    await store.record_activations([make_record(client_machine_id=a)] * 3)
    await store.record_activations(
        [make_record(client_machine_id=a), make_record(client_machine_id=b)]
    )
    await store.record_activations([make_record(client_machine_id=b)] * 2)
    stats = await store.stats(T0)
    assert (stats.clients, stats.activations) == (2, 7)
    assert (await store.list_clients()).total == 2


# ------------------------------------------------------------------ paging


def _client_batch(count: int) -> list[ActivationRecord]:
    """Clients with many ties in every sort key, so the cmid tiebreak matters."""
    records = []
    for i in range(count):
        cmid = uuid.UUID(int=(i * 7919) % 1000 + 1)  # known, scrambled order
        for n in range(i % 3 + 1):  # request_count 1..3
            records.append(
                make_record(
                    client_machine_id=cmid,
                    time=T0 + (i % 4) * HOUR + n * timedelta(seconds=1),
                    machine_name=f"PC-{i % 5}",
                    sku_name=f"SKU {i % 2}",
                    address=f"10.0.{i % 3}.{i}",
                )
            )
    return records


@pytest.mark.parametrize(
    "sort", ["last_seen", "first_seen", "machine_name", "sku_name", "request_count"]
)
async def test_keyset_paging_every_sort_key(store: Store, sort: str) -> None:
    await store.record_activations(_client_batch(23))
    everything = await all_clients(store, limit=1000)
    assert len(everything) == 23
    for descending in (True, False):
        expected = sorted(
            everything,
            key=lambda c: (getattr(c, sort), c.cmid),
            reverse=descending,
        )
        pages: list[list[ClientRow]] = []
        cursor: str | None = None
        prev_cursors: list[str | None] = []
        for _ in range(10):
            page = await store.list_clients(
                sort=sort,  # type: ignore[arg-type]
                descending=descending,
                cursor=cursor,
                limit=5,
            )
            assert page.total == 23
            pages.append(page.items)
            prev_cursors.append(page.prev_cursor)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert [c.cmid for p in pages for c in p] == [c.cmid for c in expected]
        assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
        assert prev_cursors[0] is None
        # Walk back from the last page with prev cursors: the same pages, in reverse.
        back = prev_cursors[-1]
        for index in range(len(pages) - 2, -1, -1):
            assert back is not None
            page = await store.list_clients(
                sort=sort,  # type: ignore[arg-type]
                descending=descending,
                cursor=back,
                limit=5,
            )
            assert [c.cmid for c in page.items] == [c.cmid for c in pages[index]]
            assert page.next_cursor is not None
            back = page.prev_cursor
        assert back is None


async def test_paging_is_stable_while_rows_change(store: Store) -> None:
    await store.record_activations(_client_batch(10))
    first = await store.list_clients(sort="machine_name", descending=False, limit=4)
    # New clients sorting before the cursor must not shift the next page.
    await store.record_activations(
        [make_record(machine_name="AAA-NEW"), make_record(machine_name="AAA-NEW")]
    )
    second = await store.list_clients(
        sort="machine_name", descending=False, cursor=first.next_cursor, limit=4
    )
    seen = {c.cmid for c in first.items}
    assert not seen & {c.cmid for c in second.items}
    assert all(c.machine_name >= first.items[-1].machine_name for c in second.items)


async def test_limit_is_bounded(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.list_clients(limit=0)
    with pytest.raises(ValueError):
        await store.list_clients(limit=100_000)
    with pytest.raises(ValueError):
        await store.list_clients(sort="cmid")  # type: ignore[arg-type]


def _b64(doc: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")


def _tampered(token: str, **changes: object) -> str:
    doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    doc.update(changes)
    return _b64(doc)


async def test_tampered_cursors_are_rejected(store: Store) -> None:
    await store.record_activations(_client_batch(6))
    page = await store.list_clients(limit=2)
    good = page.next_cursor
    assert good is not None
    history_cursor = (
        await store.client_history(page.items[0].cmid, limit=1)
    ).next_cursor or _tampered(good, l="history")
    bad = [
        "",
        "not base64 !!",
        "x" * 5000,
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        _b64([1, 2]),
        _b64("text"),
        _tampered(good, v=2),
        _tampered(good, l="activations"),
        _tampered(good, o="machine_name:desc"),
        _tampered(good, s="other-scope"),
        _tampered(good, d="sideways"),
        _tampered(good, k=["2024-01-01T00:00:00+00:00"]),
        _tampered(good, k=[1, 2]),
        _tampered(good, k=[True, str(uuid.uuid4())]),
        _tampered(good, k=["yesterday", str(uuid.uuid4())]),
        _tampered(good, k=["2024-01-01T00:00:00", str(uuid.uuid4())]),  # no offset
        _tampered(good, k=["2024-01-01T00:00:00+00:00", "not-a-uuid"]),
        _tampered(good, k=[[1], str(uuid.uuid4())]),
        good[:-3],
        history_cursor,
    ]
    for token in bad:
        with pytest.raises(InvalidCursor):
            await store.list_clients(cursor=token, limit=2)
    # A cursor from one sort order or search is not valid for another.
    with pytest.raises(InvalidCursor):
        await store.list_clients(cursor=good, sort="first_seen", limit=2)
    with pytest.raises(InvalidCursor):
        await store.list_clients(cursor=good, descending=False, limit=2)
    with pytest.raises(InvalidCursor):
        await store.list_clients(cursor=good, search="PC", limit=2)
    with pytest.raises(InvalidCursor):
        await store.client_history(uuid.uuid4(), cursor=good)
    with pytest.raises(InvalidCursor):
        await store.list_activations(cursor=good)
    big = _tampered(
        (await store.list_clients(sort="request_count", limit=2)).next_cursor or "",
        k=[2**70, str(uuid.uuid4())],
    )
    with pytest.raises(InvalidCursor):
        await store.list_clients(sort="request_count", cursor=big, limit=2)
    assert issubclass(InvalidCursor, StoreError)


# ------------------------------------------------------------------ search


async def test_search(store: Store) -> None:
    target = uuid.uuid4()
    await store.record_activations(
        [
            make_record(machine_name="ACCT-Laptop-07", address="10.1.2.3"),
            make_record(machine_name="hr-desktop-01", address="10.1.9.9"),
            make_record(
                machine_name="BUILD01",
                sku_name="Office LTSC Professional Plus 2021",
                address="172.16.0.5",
            ),
            make_record(client_machine_id=target, machine_name="X_100%", address="192.0.2.1"),
        ]
    )

    async def names(term: str) -> set[str]:
        page = await store.list_clients(search=term)
        assert page.total is None  # no counter for a filtered listing
        return {c.machine_name for c in page.items}

    assert await names("laptop") == {"ACCT-Laptop-07"}  # substring, case-insensitive
    assert await names("HR-") == {"hr-desktop-01"}  # prefix
    assert await names("desk") == {"hr-desktop-01"}
    assert await names("ltsc professional") == {"BUILD01"}  # SKU name substring
    assert await names("10.1.") == {"ACCT-Laptop-07", "hr-desktop-01"}  # address prefix
    assert await names("0.5") == set()  # addresses match by prefix only
    assert await names(str(target)) == {"X_100%"}  # exact CMID
    assert await names(str(target).upper()) == {"X_100%"}
    assert await names("%") == {"X_100%"}  # LIKE wildcards are literal
    assert await names("_1") == {"X_100%"}
    assert await names("nothing-like-this") == set()
    # Blank search is no search.
    assert (await store.list_clients(search="  ")).total == 4


@pytest.mark.parametrize("window", [1, 3, 20_000])
async def test_search_pages_with_its_cursor(
    store: Store, window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite filters a window of the sort order first, then scans: both must agree.
    monkeypatch.setattr(store_search, "SEARCH_WINDOW", window)
    await store.record_activations(
        [make_record(machine_name=f"LAB-{i:02}", time=T0 + i % 3 * HOUR) for i in range(7)]
        + [make_record(machine_name=f"OFFICE-{i:02}", time=T0 + HOUR) for i in range(5)]
    )
    first = await store.list_clients(search="lab", sort="machine_name", limit=4)
    second = await store.list_clients(
        search="lab", sort="machine_name", cursor=first.next_cursor, limit=4
    )
    got = [c.machine_name for c in first.items + second.items]
    assert got == [f"LAB-{i:02}" for i in range(6, -1, -1)]
    assert second.next_cursor is None
    back = await store.list_clients(
        search="lab", sort="machine_name", cursor=second.prev_cursor, limit=4
    )
    assert back.items == first.items
    by_time = await all_clients(store, search="LAB", sort="last_seen", descending=False, limit=2)
    assert [(c.last_seen, c.cmid) for c in by_time] == sorted(
        (c.last_seen, c.cmid) for c in first.items + second.items
    )


# ------------------------------------------------------------------ history, activations


async def test_client_history_pages_newest_first(store: Store) -> None:
    cmid = uuid.uuid4()
    mine = [make_record(client_machine_id=cmid, time=T0 + i * HOUR, hresult=i) for i in range(7)]
    others = [make_record(time=T0 + i * HOUR) for i in range(5)]
    for i in range(7):
        await store.record_activations([mine[i], *others[i : i + 1]])
    first = await store.client_history(cmid, limit=3)
    assert first.total == 7
    assert [r.hresult for r in first.items] == [6, 5, 4]
    assert first.prev_cursor is None
    second = await store.client_history(cmid, cursor=first.next_cursor, limit=3)
    third = await store.client_history(cmid, cursor=second.next_cursor, limit=3)
    assert [r.hresult for r in second.items] == [3, 2, 1]
    assert [r.hresult for r in third.items] == [0]
    assert third.next_cursor is None
    assert {r.cmid for r in first.items + second.items + third.items} == {cmid}
    back = await store.client_history(cmid, cursor=third.prev_cursor, limit=3)
    assert [r.hresult for r in back.items] == [3, 2, 1]
    # Someone else's cursor is not valid here.
    with pytest.raises(InvalidCursor):
        await store.client_history(uuid.uuid4(), cursor=first.next_cursor)
    unknown = await store.client_history(uuid.uuid4())
    assert (unknown.items, unknown.total, unknown.next_cursor) == ([], 0, None)


async def test_list_activations_filters(store: Store) -> None:
    records = []
    for i in range(12):
        records.append(
            make_record(
                time=T0 + i * HOUR,
                result="refused" if i % 3 == 0 else "activated",
                hresult=0xC004F042 if i % 3 == 0 else 0,
                node="node-a" if i % 2 else "node-b",
            )
        )
    await store.record_activations(records)
    everything = await store.list_activations(limit=100)
    assert everything.total == 12
    assert [r.time for r in everything.items] == [T0 + i * HOUR for i in range(11, -1, -1)]

    refused = await store.list_activations(result="refused", limit=100)
    assert refused.total == 4
    assert {r.result for r in refused.items} == {"refused"}
    assert (await store.list_activations(result="activated")).total == 8

    ranged = await store.list_activations(since=T0 + 2 * HOUR, until=T0 + 5 * HOUR, limit=100)
    assert [r.time for r in ranged.items] == [T0 + 4 * HOUR, T0 + 3 * HOUR, T0 + 2 * HOUR]
    assert ranged.total is None

    by_node = await store.list_activations(node="node-a", result="activated", limit=2)
    assert [r.time for r in by_node.items] == [T0 + 11 * HOUR, T0 + 7 * HOUR]
    more = await store.list_activations(
        node="node-a", result="activated", cursor=by_node.next_cursor, limit=2
    )
    assert [r.time for r in more.items] == [T0 + 5 * HOUR, T0 + HOUR]
    assert more.next_cursor is None
    with pytest.raises(InvalidCursor):  # filters changed under the cursor
        await store.list_activations(node="node-b", cursor=by_node.next_cursor, limit=2)


# ------------------------------------------------------------------ stats


async def test_stats_on_an_empty_database(store: Store) -> None:
    stats = await store.stats(T0)
    assert (stats.clients, stats.activations, stats.refusals) == (0, 0, 0)
    assert len(stats.per_hour) == 168
    assert all(count == 0 for _, count in stats.per_hour)
    assert (stats.per_product, stats.per_protocol, stats.last_activation) == ([], {}, None)


async def test_stats(store: Store) -> None:
    now = datetime(2024, 5, 10, 9, 41, 7, tzinfo=UTC)
    current_hour = datetime(2024, 5, 10, 9, tzinfo=UTC)
    records = [
        make_record(time=now - timedelta(minutes=5)),  # this hour
        make_record(time=now - timedelta(minutes=40), node="node-b"),  # this hour, other node
        make_record(time=current_hour - HOUR, result="refused", hresult=0xC004F074, protocol=4),
        make_record(time=current_hour - 167 * HOUR + timedelta(minutes=1)),  # oldest bucket
        make_record(time=current_hour - 168 * HOUR, protocol=5),  # just outside 7 days
        make_record(time=now + timedelta(days=1), protocol=None),  # clock skew: ahead
    ]
    # 22 product families with distinct counts: only the top 20 are reported.
    for n in range(22):
        records += [
            make_record(time=now - 30 * HOUR, product_family=f"Family {n:02}", sku_name="X")
        ] * (n + 1)
    await store.record_activations(records)
    stats = await store.stats(now)
    assert stats.activations == len(records)
    assert stats.clients == len({r.client_machine_id for r in records})
    assert stats.refusals == 1
    assert stats.last_activation == now + timedelta(days=1)
    assert len(stats.per_hour) == 168
    hours = [h for h, _ in stats.per_hour]
    assert hours[0] == current_hour - 167 * HOUR
    assert hours[-1] == current_hour
    assert hours == sorted(hours)
    assert all(h.tzinfo is not None for h in hours)
    per_hour = dict(stats.per_hour)
    assert per_hour[current_hour] == 2
    assert per_hour[current_hour - HOUR] == 1
    assert per_hour[current_hour - 167 * HOUR] == 1
    assert per_hour[current_hour - 30 * HOUR] == sum(range(1, 23))
    assert sum(per_hour.values()) == 4 + sum(range(1, 23))
    assert len(stats.per_product) == 20
    assert stats.per_product[0] == ("Family 21", 22)
    assert ("Windows", 6) in stats.per_product  # the six records above
    assert stats.per_product[-1] == ("Family 03", 4)
    assert stats.per_protocol == {4: 1, 5: 1, 6: len(records) - 3}


async def test_stats_labels_products_without_a_family_by_sku(store: Store) -> None:
    await store.record_activations(
        [
            make_record(product_family="", sku_name="unknown (1234)"),
            make_record(product_family="Office 2016", sku_name="Office Professional Plus 2016"),
            make_record(product_family="Office 2016", sku_name="Office Standard 2016"),
        ]
    )
    stats = await store.stats(T0)
    assert stats.per_product == [("Office 2016", 2), ("unknown (1234)", 1)]


# ------------------------------------------------------------------ users


async def test_users(store: Store) -> None:
    assert await store.list_users() == []
    assert await store.get_user("admin") is None
    before = datetime.now(UTC)
    await store.add_user("admin", "$argon2id$one", is_admin=True)
    await store.add_user("viewer", "$argon2id$two")
    with pytest.raises(UserExists):
        await store.add_user("admin", "$argon2id$three")
    admin = await store.get_user("admin")
    assert admin is not None
    assert (admin.name, admin.password_hash, admin.is_admin, admin.disabled) == (
        "admin",
        "$argon2id$one",
        True,
        False,
    )
    assert before - timedelta(seconds=5) <= admin.created <= datetime.now(UTC)
    assert [u.name for u in await store.list_users()] == ["admin", "viewer"]
    assert (await store.get_user("viewer")).is_admin is False  # type: ignore[union-attr]
    assert await store.get_user("ADMIN") is None  # names are exact

    await store.set_password("viewer", "$argon2id$new")
    assert (await store.get_user("viewer")).password_hash == "$argon2id$new"  # type: ignore[union-attr]
    with pytest.raises(UserNotFound):
        await store.set_password("ghost", "x")
    await store.remove_user("viewer")
    with pytest.raises(UserNotFound):
        await store.remove_user("viewer")
    assert [u.name for u in await store.list_users()] == ["admin"]
    assert issubclass(UserExists, StoreError)
    assert issubclass(UserNotFound, StoreError)


# ------------------------------------------------------------------ connection handling


async def test_ping_and_repr(store: Store, backend: str) -> None:
    await store.ping()
    assert store.dialect == backend
    assert "Store(" in repr(store)


@pytest.mark.integration
async def test_password_is_masked(pg_database: str) -> None:
    secret = pg_database.replace("kmsgate@", "kmsgate:s3cr3t@")
    store = await Store.open(secret)
    try:
        await store.ping()
        assert "s3cr3t" not in store.url
        assert "s3cr3t" not in repr(store)
        assert "s3cr3t" not in str(store)
        assert "***" in store.url
    finally:
        await store.close()
    assert masked(secret) == store.url


async def test_unreachable_postgres_is_unavailable() -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    with pytest.raises(StoreUnavailable):
        await Store.open("postgresql://kmsgate@127.0.0.1:1/kmsgate")
    store = await Store.open("postgresql://kmsgate@127.0.0.1:1/kmsgate", upgrade=False)
    try:
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.record_activations([make_record()])
    finally:
        await store.close()


async def test_sqlite_file_layout(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "kmsgate.db"
    store = await Store.open(f"sqlite:///{path}")
    try:
        await store.record_activations([make_record()])
        assert path.exists()
        async with store.engine.connect() as conn:
            mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
            sync = (await conn.execute(text("PRAGMA synchronous"))).scalar()
            busy = (await conn.execute(text("PRAGMA busy_timeout"))).scalar()
            checkpoint = (await conn.execute(text("PRAGMA wal_autocheckpoint"))).scalar()
        assert (mode, sync) == ("wal", 1)  # 1 = NORMAL
        assert checkpoint == 10_000
        assert busy is not None and busy >= 1000
    finally:
        await store.close()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
async def test_in_memory_sqlite_serves_concurrent_coroutines(url: str) -> None:
    store = await Store.open(url)
    try:
        cmid = uuid.uuid4()
        writes = [store.record_activations([make_record(client_machine_id=cmid)]) for _ in range(5)]
        reads = [store.list_clients() for _ in range(5)]
        await asyncio.gather(*writes, *reads, store.add_user("a", "h"))
        client = await store.get_client(cmid)
        assert client is not None and client.request_count == 5
    finally:
        await store.close()


def test_url_mapping() -> None:
    assert str(async_url("sqlite:///x.db")) == "sqlite+aiosqlite:///x.db"
    assert async_url("postgresql://u:p@h:5/d").drivername == "postgresql+asyncpg"
    assert async_url("postgres://u@h/d").drivername == "postgresql+asyncpg"
    assert async_url("postgresql+psycopg://u@h/d").drivername == "postgresql+asyncpg"
    with pytest.raises(StoreError):
        async_url("mysql://u@h/d")
    with pytest.raises(StoreError):
        async_url("not a url")


def test_records_are_frozen() -> None:
    record = make_record()
    with pytest.raises(AttributeError):
        record.machine_name = "x"  # type: ignore[misc]
    assert replace(record, machine_name="y").machine_name == "y"
