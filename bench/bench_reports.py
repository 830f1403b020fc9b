"""Licence report benchmark: a fleet renewing weekly, on SQLite and PostgreSQL (run by hand).

Seeds CLIENTS machines that renew every 7 days (random phase) over MONTHS months, in time
order as a host writes them (2 % refused, 3 % of the fleet going silent), then times the
monthly report and the stale-machines page and prints the query plans.

Usage: .venv/bin/python bench/bench_reports.py [--backend sqlite|postgresql|both]
           [--clients N] [--months N] [--workdir DIR]
A throwaway PostgreSQL server (Debian's postgresql package) is started for postgresql.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.support.postgres (the throwaway server)

from kmsgate.catalog import default_catalog  # noqa: E402
from kmsgate.store.database import Store  # noqa: E402
from kmsgate.store.records import ActivationRecord  # noqa: E402
from kmsgate.store.reports import Month, ReportStore  # noqa: E402
from kmsgate.store.schema import activations, clients  # noqa: E402

MAX_CLIENTS = 2_000_000
CHUNK = 100_000  # activation rows per insert round: bounds memory
RUNS = 5
START = datetime(2026, 9, 1, tzinfo=UTC)
WEEK = timedelta(days=7)
EPID = "06401-00206-271-298329-03-1033-9600.0000-0452017"
SKUS = (
    "Windows 10/11 Pro",
    "Windows 10/11 Enterprise",
    "Windows Server 2022 Standard",
    "Office LTSC Professional Plus 2021",
    "Office Professional Plus 2019",
)


def fleet_rows(
    rng: random.Random, count: int, months: int
) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """(activation row, client row on the client's last request) in time order."""
    catalog = default_catalog()
    skus = [catalog.resolve_product(name) for name in SKUS]
    end = START + timedelta(days=30.5 * months)
    heap: list[tuple[datetime, int]] = []
    machines: list[dict[str, Any]] = []
    for n in range(count):
        sku = skus[n % len(skus)]
        silent_at = end
        if rng.random() < 0.03:
            silent_at = START + (end - START) * rng.random()
        machines.append(
            {
                "cmid": uuid.UUID(int=rng.getrandbits(128), version=4),
                "name": f"PC-{n:07d}.corp.example",
                "sku": sku,
                "address": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}",
                "silent_at": silent_at,
                "first": None,
                "count": 0,
            }
        )
        heap.append((START + WEEK * rng.random(), n))
    heapq.heapify(heap)
    while heap:
        when, n = heapq.heappop(heap)
        machine = machines[n]
        refused = rng.random() < 0.02
        machine["first"] = machine["first"] or when
        machine["count"] += 1
        nxt = when + WEEK
        last = nxt >= min(end, machine["silent_at"])
        sku = machine["sku"]
        row = {
            "time": when,
            "cmid": machine["cmid"],
            "machine_name": machine["name"],
            "address": machine["address"],
            "sku_id": sku.id,
            "sku_name": sku.name,
            "license_status": 1,
            "protocol": 6,
            "result": "refused" if refused else "activated",
            "hresult": 0xC004F042 if refused else 0,
            "node": "kms-a",
        }
        client = None
        if last:
            client = {
                "cmid": machine["cmid"],
                "machine_name": machine["name"],
                "application_id": sku.application_id,
                "sku_id": sku.id,
                "sku_name": sku.name,
                "kms_id": sku.kms_id,
                "license_status": 1,
                "first_seen": machine["first"],
                "last_seen": when,
                "request_count": machine["count"],
                "last_epid": None if refused else EPID,
                "last_address": machine["address"],
                "last_protocol": 6,
            }
        else:
            heapq.heappush(heap, (nxt, n))
        yield row, client


async def bulk_insert(store: Store, table: Any, rows: list[dict[str, Any]]) -> None:
    """COPY on PostgreSQL (asyncpg), executemany in one transaction on SQLite."""
    if not rows:
        return
    async with store.engine.connect() as conn:
        if store.dialect == "postgresql":
            raw = await conn.get_raw_connection()
            columns = list(rows[0])
            driver: Any = raw.driver_connection
            await driver.copy_records_to_table(
                table.name, records=[tuple(r[c] for c in columns) for r in rows], columns=columns
            )
        else:
            await conn.execute(insert(table), rows)
            await conn.commit()


async def seed(store: Store, count: int, months: int) -> int:
    rng = random.Random(12)
    batch: list[dict[str, Any]] = []
    client_batch: list[dict[str, Any]] = []
    total = 0
    started = time.perf_counter()
    for row, client in fleet_rows(rng, count, months):
        batch.append(row)
        if client is not None:
            client_batch.append(client)
        if len(batch) >= CHUNK:
            await bulk_insert(store, activations, batch)
            total += len(batch)
            batch = []
            print(f"  {total:>11,} activations {time.perf_counter() - started:7.1f} s", flush=True)
    await bulk_insert(store, activations, batch)
    total += len(batch)
    for start in range(0, len(client_batch), CHUNK):
        await bulk_insert(store, clients, client_batch[start : start + CHUNK])
    await store.optimize()
    print(
        f"  seeded {total:,} activations, {count:,} clients "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return total


async def timed(label: str, call: Callable[[], Awaitable[object]]) -> None:
    samples = []
    for _ in range(RUNS):
        begin = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - begin)
    print(
        f"  {label:<46} median {statistics.median(samples) * 1000:9.1f} ms"
        f"   max {max(samples) * 1000:9.1f} ms"
    )


async def explain(store: Store, sql: str) -> None:
    prefix = "EXPLAIN QUERY PLAN " if store.dialect == "sqlite" else "EXPLAIN "
    async with store.engine.connect() as conn:
        rows = (await conn.exec_driver_sql(prefix + sql)).all()
    for row in rows:
        print("    " + " | ".join(str(v) for v in row))


def write_batches(count: int, rng: random.Random) -> list[list[ActivationRecord]]:
    """Batches of 500 requests from machines not seen this month: each adds a machine_months
    row, the trigger's costliest case (a renewal only looks its row up)."""
    catalog = default_catalog()
    skus = [catalog.resolve_product(name) for name in SKUS]
    when = START + timedelta(days=70)
    batches = []
    for b in range(count):
        batch = []
        for k in range(500):
            sku = skus[k % len(skus)]
            batch.append(
                ActivationRecord(
                    time=when + timedelta(seconds=b * 500 + k),
                    client_machine_id=uuid.UUID(int=rng.getrandbits(128), version=4),
                    machine_name=f"NEW-{b}-{k}",
                    address="10.200.0.1",
                    application_id=sku.application_id,
                    sku_id=sku.id,
                    sku_name=sku.name,
                    kms_id=sku.kms_id,
                    product_family="Windows",
                    license_status=1,
                    protocol=6,
                    result="activated",
                    hresult=0,
                    epid=EPID,
                    node="bench",
                )
            )
        batches.append(batch)
    return batches


async def write_cost(store: Store) -> None:
    """Time per recorded activation with and without the machine_months trigger.

    Phases with, without, without, with (ABBA) of 10 batches each, so a drifting machine
    load weighs on both alike; the trigger is dropped and re-created between phases only.
    On SQLite the database works in this process, so its CPU time is measured too.
    """
    trigger = "activations_machine_months"
    if store.dialect == "sqlite":
        async with store.engine.connect() as conn:
            create = (
                await conn.exec_driver_sql(
                    f"SELECT sql FROM sqlite_master WHERE name = '{trigger}'"
                )
            ).scalar_one()
        drop = f"DROP TRIGGER {trigger}"
    else:
        create = (
            f"CREATE TRIGGER {trigger} AFTER INSERT ON activations REFERENCING NEW TABLE "
            "AS inserted FOR EACH STATEMENT EXECUTE FUNCTION kmsgate_machine_months()"
        )
        drop = f"DROP TRIGGER {trigger} ON activations"
    batches = iter(write_batches(40, random.Random(5)))
    wall = {True: 0.0, False: 0.0}
    cpu = {True: 0.0, False: 0.0}
    records = {True: 0, False: 0}
    present = True  # migration 0009 created it
    for with_trigger in (True, False, False, True):
        if with_trigger != present:
            async with store.engine.begin() as conn:
                await conn.exec_driver_sql(create if with_trigger else drop)
            present = with_trigger
        for _ in range(10):
            batch = next(batches)
            started, cpu_started = time.perf_counter(), time.process_time()
            await store.record_activations(batch)
            wall[with_trigger] += time.perf_counter() - started
            cpu[with_trigger] += time.process_time() - cpu_started
            records[with_trigger] += len(batch)
    if not present:
        async with store.engine.begin() as conn:
            await conn.exec_driver_sql(create)
    for with_trigger in (True, False):
        label = "with trigger" if with_trigger else "without"
        n = records[with_trigger]
        print(
            f"  record_activations {label:<13} {wall[with_trigger] / n * 1e6:8.1f} us wall, "
            f"{cpu[with_trigger] / n * 1e6:8.1f} us CPU of this process per record"
        )


async def run(url: str, count: int, months: int) -> None:
    store = await Store.open(url)
    try:
        await seed(store, count, months)
        reports = ReportStore(store)
        month = Month.containing(START + timedelta(days=40))
        report = await reports.monthly(month)
        print(f"  {month}: {report.machines:,} machines, {len(report.products)} products")
        await timed(f"monthly report {month}", lambda: reports.monthly(month))
        now = START + timedelta(days=30.5 * months)
        stale = await reports.stale(days=14, now=now, limit=100)
        print(f"  stale (14 days): {stale.total:,} machines")
        await timed("stale machines, first page of 100", lambda: reports.stale(days=14, now=now))
        if stale.next_cursor:
            cursor = stale.next_cursor
            await timed(
                "stale machines, second page",
                lambda: reports.stale(days=14, now=now, cursor=cursor),
            )
        start, end = month.start, month.end
        if store.dialect == "sqlite":
            start_text, end_text = (v.replace(tzinfo=None).isoformat(" ") for v in (start, end))
        else:
            start_text, end_text = start.isoformat(), end.isoformat()
        raw = (
            "SELECT sku_id, max(sku_name), count(DISTINCT cmid) FROM activations "
            f"WHERE time >= '{start_text}' AND time < '{end_text}' AND result = 'activated' "
            "AND cmid IS NOT NULL GROUP BY sku_id"
        )

        async def scan() -> object:
            async with store.engine.connect() as conn:
                return (await conn.exec_driver_sql(raw)).all()

        await timed("the same from activations (no machine_months)", scan)
        print("  plan of the per-product query:")
        await explain(
            store,
            "SELECT sku_id, max(sku_name), count(*) FROM machine_months "
            f"WHERE month = '{month}' GROUP BY sku_id",
        )
        await write_cost(store)
    finally:
        await store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--clients", type=int, default=250_000)
    parser.add_argument("--months", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    if not 1 <= args.clients <= MAX_CLIENTS or not 1 <= args.months <= 12:
        parser.error(f"--clients must be 1..{MAX_CLIENTS} and --months 1..12")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kmsgate-bench-reports-"))
    try:
        if args.backend in ("sqlite", "both"):
            print(f"SQLite, {args.clients:,} clients, {args.months} months")
            asyncio.run(run(f"sqlite:///{workdir / 'reports.db'}", args.clients, args.months))
        if args.backend in ("postgresql", "both"):
            from tests.support.postgres import PostgresServer, find_bindir

            bindir = find_bindir()
            if bindir is None:
                print("PostgreSQL binaries not found", file=sys.stderr)
                return 1
            server = PostgresServer(bindir)
            try:
                server.start()
                url = server.create_database("bench_reports")
                print(f"PostgreSQL, {args.clients:,} clients, {args.months} months")
                asyncio.run(run(url, args.clients, args.months))
            finally:
                server.cleanup()
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
