"""Licence reports on SQLite and PostgreSQL: exact distinct-machine counts on seeded records."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kmsgate.catalog import default_catalog
from kmsgate.store import migrate
from kmsgate.store.audit import AuditEvent
from kmsgate.store.database import Store
from kmsgate.store.errors import InvalidCursor
from kmsgate.store.gateway import GatewayStore
from kmsgate.store.records import ActivationRecord
from kmsgate.store.reports import Month, ReportStore

OCT, NOV, DEC = Month(2026, 10), Month(2026, 11), Month(2026, 12)
NOV_START = datetime(2026, 11, 1, tzinfo=UTC)
DEC_START = datetime(2026, 12, 1, tzinfo=UTC)
TICK = timedelta(microseconds=1)
PRO, ENT, OFFICE = (
    "Windows 10/11 Pro",
    "Windows 10/11 Enterprise",
    "Office LTSC Professional Plus 2021",
)
UNKNOWN_SKU = uuid.UUID("99999999-8888-4777-8666-555555555555")


def cmid(n: int) -> uuid.UUID:
    return uuid.UUID(int=0xC0000 + n)


def record(
    when: datetime,
    machine: int | None,
    product: str | None = PRO,
    *,
    result: str = "activated",
    name: str | None = None,
    sku_name: str | None = None,
) -> ActivationRecord:
    """One request as the recorder writes it; product None is an unknown SKU."""
    catalog = default_catalog()
    sku = catalog.resolve_product(product) if product else None
    refused = result == "refused"
    return ActivationRecord(
        time=when,
        client_machine_id=None if machine is None else cmid(machine),
        machine_name=name or f"pc-{machine}.corp.example",
        address=f"10.1.0.{(machine or 0) % 250 + 1}",
        application_id=sku.application_id if sku else None,
        sku_id=sku.id if sku else UNKNOWN_SKU,
        sku_name=sku_name or (sku.name if sku else f"unknown ({UNKNOWN_SKU})"),
        kms_id=sku.kms_id if sku else None,
        product_family="Windows",
        license_status=1,
        protocol=6,
        result=result,
        hresult=0xC004F042 if refused else 0,
        epid=None if refused else "03612-00206-556-123727-03-1033-17763.0000-2972018",
        node="n1",
    )


def report_records() -> list[ActivationRecord]:
    """November 2026 with traps at both month boundaries; expected counts are in NOV_EXPECTED."""
    mid = datetime(2026, 11, 15, 12, tzinfo=UTC)
    records = [
        # 1: the last instant of October and the first of November: once in each month.
        record(NOV_START - TICK, 1),
        record(NOV_START, 1),
        # 2: renews ten times in November: one machine.
        *(record(NOV_START + timedelta(days=2 * k, hours=1), 2) for k in range(10)),
        # 3: served in October, only refused in November: not a November machine.
        record(datetime(2026, 10, 20, tzinfo=UTC), 3),
        record(mid, 3, result="refused"),
        record(mid + timedelta(days=1), 3, result="refused"),
        # 4: changed edition mid-month: in both products, once in the total.
        record(mid, 4, PRO),
        record(mid + timedelta(days=3), 4, ENT),
        # 5: first served exactly when December starts: not November (the end is exclusive).
        record(DEC_START, 5),
        # 6, 7: Office, one of them renewing twice.
        record(mid, 6, OFFICE),
        record(mid, 7, OFFICE),
        record(mid + timedelta(days=7), 7, OFFICE),
        # 8: an unknown SKU is reported under its recorded name.
        record(mid, 8, None),
        # An undecodable request has no machine: never counted, even if it were served.
        record(mid, None, None, name="broken"),
        # 9: the catalogue renamed its SKU mid-month: still one product row.
        record(mid, 9, ENT, sku_name="Windows 10/11 Enterprise (old name)"),
    ]
    return sorted(records, key=lambda r: r.time)


# machines per product in November: Pro 1, 2, 4; Enterprise 4, 9; Office 6, 7; unknown 8.
NOV_EXPECTED = {PRO: 3, ENT: 2, OFFICE: 2, f"unknown ({UNKNOWN_SKU})": 1}
NOV_TOTAL = 7  # 1, 2, 4, 6, 7, 8, 9


def audit(
    when: datetime,
    user: str | None,
    machine: int | None,
    product: str = PRO,
    *,
    kind: str = "activation",
    result: str | None = "activated",
) -> AuditEvent:
    return AuditEvent(
        time=when,
        kind=kind,
        node="n1",
        username=user,
        address="10.9.0.1",
        cmid=None if machine is None else cmid(machine),
        machine_name=None if machine is None else f"pc-{machine}",
        product=product,
        result=result,
    )


def report_audit() -> list[AuditEvent]:
    """Gateway activations of November; expected per user in NOV_USERS."""
    mid = datetime(2026, 11, 10, tzinfo=UTC)
    return [
        # alice: machine 1 three times and machine 2 (Pro), machine 6 (Office).
        audit(mid, "alice", 1),
        audit(mid + timedelta(days=7), "alice", 1),
        audit(mid + timedelta(days=14), "alice", 1),
        audit(mid, "alice", 2),
        audit(mid, "alice", 6, OFFICE),
        # bob: machine 2 too (a shared lab PC counts for each user), one refusal, and
        # machine 11 on the first instant of December (not November).
        audit(mid + timedelta(days=1), "bob", 2),
        audit(mid, "bob", 10, result="refused"),
        audit(DEC_START, "bob", 11),
        # carol: her only activation was on the last instant of October.
        audit(NOV_START - TICK, "carol", 12),
        # a connection nobody had logged in for, and events of other kinds
        audit(mid, None, 13),
        audit(mid, "dave", 14, kind="window_consumed", result=None),
        audit(mid, "erin", None),
    ]


NOV_USERS = [("alice", PRO, 2), ("alice", OFFICE, 1), ("bob", PRO, 1)]
NOV_USER_TOTALS = [("alice", 3), ("bob", 1)]


async def seed(store: Store) -> None:
    await store.record_activations(report_records())
    await GatewayStore(store).add_audit(report_audit())


async def test_monthly_counts_distinct_served_machines(store: Store) -> None:
    await seed(store)
    report = await ReportStore(store, default_catalog()).monthly(NOV)
    assert {p.product: p.machines for p in report.products} == NOV_EXPECTED
    assert report.machines == NOV_TOTAL
    # Most machines first, then by name; the renamed SKU keeps one row under one id.
    assert report.products[0].product == PRO
    enterprise = default_catalog().resolve_product(ENT).id
    assert [p.sku_id for p in report.products if p.product == ENT] == [enterprise]
    assert report.month == NOV


async def test_without_a_catalogue_a_renamed_sku_keeps_one_row(store: Store) -> None:
    await seed(store)
    report = await ReportStore(store).monthly(NOV)
    enterprise = [
        p for p in report.products if p.sku_id == default_catalog().resolve_product(ENT).id
    ]
    assert [(p.product, p.machines) for p in enterprise] == [(f"{ENT} (old name)", 2)]


async def test_month_boundaries(store: Store) -> None:
    await seed(store)
    reports = ReportStore(store)
    october = await reports.monthly(OCT)
    assert {p.product: p.machines for p in october.products} == {PRO: 2}  # machines 1 and 3
    assert october.machines == 2
    assert [(t.username, t.machines) for t in october.user_totals] == [("carol", 1)]
    december = await reports.monthly(DEC)
    assert {p.product: p.machines for p in december.products} == {PRO: 1}  # machine 5
    assert [(u.username, u.product, u.machines) for u in december.users] == [("bob", PRO, 1)]
    empty = await reports.monthly(Month(2027, 1))
    assert (empty.machines, empty.products, empty.users, empty.user_totals) == (0, [], [], [])


async def test_per_user_attribution_from_the_audit_trail(store: Store) -> None:
    await seed(store)
    report = await ReportStore(store).monthly(NOV)
    assert [(u.username, u.product, u.machines) for u in report.users] == NOV_USERS
    assert [(t.username, t.machines) for t in report.user_totals] == NOV_USER_TOTALS


async def test_a_machine_renewing_all_month_counts_once(store: Store) -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    await store.record_activations(
        [record(start + timedelta(hours=h), 42) for h in range(0, 30 * 24, 7)]
    )
    report = await ReportStore(store).monthly(NOV)
    assert [(p.product, p.machines) for p in report.products] == [(PRO, 1)]
    assert report.machines == 1


async def test_refusals_never_count(store: Store) -> None:
    mid = datetime(2026, 11, 15, tzinfo=UTC)
    await store.record_activations(
        [record(mid + timedelta(minutes=m), m, result="refused") for m in range(20)]
    )
    report = await ReportStore(store).monthly(NOV)
    assert (report.machines, report.products) == (0, [])


def test_upgrade_folds_in_the_activations_already_stored(empty_db_url: str) -> None:
    """A database written before migration 0007 reports the same as one written after."""
    migrate.upgrade(empty_db_url, "0004")

    async def write_old() -> None:
        store = await Store.open(empty_db_url, upgrade=False)
        try:
            await store.record_activations(report_records())
        finally:
            await store.close()

    async def read_new() -> tuple[dict[str, int], int, dict[str, int]]:
        store = await Store.open(empty_db_url, upgrade=False)
        try:
            reports = ReportStore(store, default_catalog())
            before = await reports.monthly(NOV)
            # The trigger keeps it up after the upgrade: a new machine, and a renewal.
            await store.record_activations(
                [record(NOV_START + timedelta(days=3), 30), record(NOV_START, 2)]
            )
            after = await reports.monthly(NOV)
        finally:
            await store.close()
        return (
            {p.product: p.machines for p in before.products},
            before.machines,
            {p.product: p.machines for p in after.products},
        )

    asyncio.run(write_old())
    migrate.upgrade(empty_db_url)
    products, total, later = asyncio.run(read_new())
    assert (products, total) == (NOV_EXPECTED, NOV_TOTAL)
    assert later == {**NOV_EXPECTED, PRO: NOV_EXPECTED[PRO] + 1}


async def test_nodes_writing_the_same_machines_at_once(store: Store, db_url: str) -> None:
    """Two nodes recording overlapping batches in opposite orders: no deadlock, exact counts."""
    other = await Store.open(db_url)
    mid = datetime(2026, 11, 15, tzinfo=UTC)
    try:
        for round_ in range(6):
            batch = [record(mid + timedelta(minutes=round_), n) for n in range(40)]
            await asyncio.gather(
                store.record_activations(batch),
                other.record_activations(batch[::-1]),
            )
    finally:
        await other.close()
    report = await ReportStore(store).monthly(NOV)
    assert [(p.product, p.machines) for p in report.products] == [(PRO, 40)]
    assert report.machines == 40


NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


async def seed_stale(store: Store) -> None:
    records = [
        # 21..25 last seen 31..35 days ago, the last one refused (it gave up, not lapsed).
        *(record(NOW - timedelta(days=30 + k), 20 + k) for k in range(1, 6)),
        record(NOW - timedelta(days=35, minutes=-1), 25, result="refused"),
        # 26 seen exactly 30 days ago: on the cutoff, not before it.
        record(NOW - timedelta(days=30), 26),
        # 27 stale long ago but back yesterday, refused: seen, so not stale.
        record(NOW - timedelta(days=90), 27),
        record(NOW - timedelta(days=1), 27, result="refused"),
        # 28 renews weekly.
        *(record(NOW - timedelta(days=7 * k), 28) for k in range(6)),
    ]
    await store.record_activations(sorted(records, key=lambda r: r.time))


async def test_stale_machines(store: Store) -> None:
    await seed_stale(store)
    report = await ReportStore(store).stale(days=30, now=NOW)
    assert report.total == 5
    assert report.cutoff == NOW - timedelta(days=30)
    assert [m.cmid for m in report.machines] == [cmid(21), cmid(22), cmid(23), cmid(24), cmid(25)]
    results = {m.cmid: m.last_result for m in report.machines}
    assert results[cmid(25)] == "refused" and results[cmid(21)] == "activated"
    first = report.machines[0]
    assert (first.product, first.request_count, first.last_seen) == (
        PRO,
        1,
        NOW - timedelta(days=31),
    )
    assert report.next_cursor is None
    wider = await ReportStore(store).stale(days=29, now=NOW)
    assert wider.total == 6 and wider.machines[0].cmid == cmid(26)


async def test_stale_paging_visits_each_machine_once(store: Store) -> None:
    await seed_stale(store)
    reports = ReportStore(store)
    seen: list[uuid.UUID] = []
    cursor: str | None = None
    for _ in range(10):
        page = await reports.stale(days=30, now=NOW, cursor=cursor, limit=2)
        assert page.total == 5
        seen.extend(m.cmid for m in page.machines)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [cmid(21), cmid(22), cmid(23), cmid(24), cmid(25)]
    first = await reports.stale(days=30, now=NOW, limit=2)
    assert first.next_cursor is not None
    with pytest.raises(InvalidCursor):  # made for 30 days, replayed for 60
        await reports.stale(days=60, now=NOW, cursor=first.next_cursor)
    with pytest.raises(InvalidCursor):
        await reports.stale(days=30, now=NOW, cursor="not-a-cursor")


async def test_stale_rejects_bad_arguments(store: Store) -> None:
    reports = ReportStore(store)
    for days in (0, -1, 36501):
        with pytest.raises(ValueError, match="days"):
            await reports.stale(days=days, now=NOW)
    with pytest.raises(ValueError, match="limit"):
        await reports.stale(days=30, now=NOW, limit=0)


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_monthly_query_reads_one_month_of_keys(store: Store) -> None:
    """The month is one range of machine_months' primary key, not a scan of every request."""
    async with store.engine.connect() as conn:
        plan = (
            await conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT sku_id, max(sku_name), count(*) FROM machine_months "
                "WHERE month = '2026-11' GROUP BY sku_id"
            )
        ).all()
    details = " ".join(str(row[-1]) for row in plan)
    assert "SEARCH machine_months USING PRIMARY KEY (month=?)" in details
    assert "activations" not in details


@pytest.mark.parametrize(
    ("text", "month"),
    [("2026-11", Month(2026, 11)), (" 1999-01 ", Month(1999, 1)), ("2026-12", DEC)],
)
def test_month_parse(text: str, month: Month) -> None:
    assert Month.parse(text) == month
    assert str(month) == text.strip()


@pytest.mark.parametrize("text", ["2026-13", "2026-00", "2026-1", "26-11", "2026/11", "", "x"])
def test_month_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"YYYY-MM|no month"):
        Month.parse(text)


def test_month_arithmetic() -> None:
    assert (DEC.next(), Month(2027, 1).previous()) == (Month(2027, 1), DEC)
    assert NOV.start == NOV_START and NOV.end == DEC_START
    assert Month.containing(DEC_START - TICK) == NOV
    assert Month.containing(datetime(2026, 12, 1, 0, 30, tzinfo=UTC).astimezone()) == DEC


async def test_machine_months_keep_each_machine_once_with_its_first_name(store: Store) -> None:
    late_nov = NOV_START + timedelta(days=29, hours=23)
    # One batch across a month's end, a machine twice in November under two SKU names,
    # out of time order, with a refusal and a request without a CMID.
    await store.record_activations(
        [
            record(late_nov + timedelta(hours=2), 1),  # December
            record(late_nov, 1, sku_name="first name"),
            record(late_nov + timedelta(minutes=5), 1, sku_name="second name"),
            record(late_nov, 2, result="refused"),
            record(late_nov, None),
        ]
    )
    await store.record_activations([record(late_nov, 1, sku_name="a later batch")])
    async with store.engine.connect() as conn:
        rows = (
            await conn.exec_driver_sql(
                "SELECT month, sku_name FROM machine_months ORDER BY month, sku_name"
            )
        ).all()
    assert [tuple(row) for row in rows] == [("2026-11", "first name"), ("2026-12", PRO)]


def test_sqlite_fills_machine_months_without_a_row_trigger(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/k.db"
    migrate.upgrade(url)

    def triggers() -> list[str]:
        with sqlite3.connect(tmp_path / "k.db") as db:
            return [
                r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
            ]

    assert "activations_machine_months" not in triggers()
    migrate.downgrade(url, "0010")
    assert "activations_machine_months" in triggers()
    migrate.upgrade(url)
    assert "activations_machine_months" not in triggers()
