"""Store benchmark at fleet scale: 1 000 000 clients on SQLite and PostgreSQL (run by hand).

Seeds with bulk inserts (SQLAlchemy Core executemany on SQLite, COPY on PostgreSQL), then
times the dashboard queries and prints p50/p95 per query, seeding time and database size.

Usage: .venv/bin/python bench/bench_store.py [--backend sqlite|postgresql|both]
           [--clients N] [--iterations N] [--pg-url URL] [--workdir DIR]
Without --pg-url a throwaway PostgreSQL server (Debian's postgresql package) is started.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.support.postgres (the throwaway server)

from kmsgate.catalog import default_catalog  # noqa: E402
from kmsgate.store.database import Store  # noqa: E402
from kmsgate.store.records import ActivationRecord  # noqa: E402
from kmsgate.store.schema import (  # noqa: E402
    activation_hours,
    activations,
    clients,
    counters,
    product_counts,
)

MAX_CLIENTS = 5_000_000
MAX_ITERATIONS = 2_000
CHUNK = 50_000  # clients generated and inserted per round: bounds memory
TIME_BUDGET = 20.0  # seconds per query at most, whatever --iterations says
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SPAN = timedelta(days=90)
# Requests per client and their weights: mean 2.5, so 1M clients make ~2.5M activations.
REQUESTS = (1, 2, 3, 4)
REQUEST_WEIGHTS = (0.25, 0.25, 0.25, 0.25)
SKU_MIX = {
    "Windows 10/11 Pro": 30,
    "Windows 10/11 Enterprise": 25,
    "Windows 10/11 Education": 5,
    "Windows Server 2022 Standard": 4,
    "Windows Server 2022 Datacenter": 2,
    "Windows Server 2019 Standard": 3,
    "Office LTSC Professional Plus 2021": 15,
    "Office Professional Plus 2019": 8,
    "Office Professional Plus 2016": 6,
    "Office Visio LTSC Pro 2021": 1,
    "Office Project Pro 2019": 1,
}


@dataclass(frozen=True)
class Product:
    sku_id: uuid.UUID
    name: str
    kms_id: uuid.UUID
    application_id: uuid.UUID
    family: str


@dataclass
class Seeded:
    """What the seeding produced: sizes, timing and samples to query with."""

    clients: int = 0
    activations: int = 0
    seconds: float = 0.0
    sample_cmids: list[uuid.UUID] = field(default_factory=list)
    sample_names: list[str] = field(default_factory=list)
    sample_addresses: list[str] = field(default_factory=list)


def products() -> tuple[list[Product], list[int]]:
    """A realistic SKU mix, resolved from the shipped catalogue."""
    catalog = default_catalog()
    by_name = {sku.name: sku for sku in catalog.skus}
    chosen: list[Product] = []
    weights: list[int] = []
    for name, weight in SKU_MIX.items():
        sku = by_name.get(name)
        if sku is None:
            continue
        kms = catalog.kms_id(sku.kms_id)
        if "Server" in name:
            family = "Windows Server"
        elif name.startswith("Office"):
            family = kms.name if kms else "Office"
        else:
            family = "Windows"
        chosen.append(Product(sku.id, sku.name, sku.kms_id, sku.application_id, family))
        weights.append(weight)
    if not chosen:  # catalogue renamed everything: fall back to whatever it has
        chosen = [
            Product(s.id, s.name, s.kms_id, s.application_id, "Windows") for s in catalog.skus[:10]
        ]
        weights = [1] * len(chosen)
    return chosen, weights


def machine_name(rng: random.Random, n: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    kind = rng.random()
    if kind < 0.45:
        return "DESKTOP-" + "".join(rng.choices(alphabet, k=7))
    if kind < 0.65:
        return "LAPTOP-" + "".join(rng.choices(alphabet, k=7))
    if kind < 0.9:
        dept = rng.choice(["ACCT", "HR", "ENG", "SALES", "OPS", "LAB", "IT", "MKT"])
        return f"{dept}-PC-{n % 100_000:05}"
    return f"WS{n:07}"


def generate(
    rng: random.Random, start: int, count: int, catalogue: tuple[list[Product], list[int]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Client rows and their activation rows, consistent with what the store would write."""
    skus, weights = catalogue
    client_rows: list[dict[str, Any]] = []
    activation_rows: list[dict[str, Any]] = []
    span_s = int(SPAN.total_seconds())
    for n in range(start, start + count):
        cmid = uuid.UUID(int=rng.getrandbits(128), version=4)
        product = rng.choices(skus, weights)[0]
        name = machine_name(rng, n)
        address = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        requests = rng.choices(REQUESTS, REQUEST_WEIGHTS)[0]
        times = sorted(NOW - timedelta(seconds=rng.randrange(span_s)) for _ in range(requests))
        protocol = 6 if product.family != "Office 2016" else 5
        for when in times:
            refused = rng.random() < 0.02
            activation_rows.append(
                {
                    "time": when,
                    "cmid": cmid,
                    "machine_name": name,
                    "address": address,
                    "sku_id": product.sku_id,
                    "sku_name": product.name,
                    "license_status": 2 if when == times[0] else 1,
                    "protocol": protocol,
                    "result": "refused" if refused else "activated",
                    "hresult": 0xC004F042 if refused else 0,
                    "node": rng.choice(("kms-a", "kms-b")),
                }
            )
        client_rows.append(
            {
                "cmid": cmid,
                "machine_name": name,
                "application_id": product.application_id,
                "sku_id": product.sku_id,
                "sku_name": product.name,
                "kms_id": product.kms_id,
                "license_status": 1 if requests > 1 else 2,
                "first_seen": times[0],
                "last_seen": times[-1],
                "request_count": requests,
                "last_epid": "06401-00206-271-298329-03-1033-9600.0000-0452017",
                "last_address": address,
                "last_protocol": protocol,
            }
        )
    return client_rows, activation_rows


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


async def seed(store: Store, total: int, rng: random.Random) -> Seeded:
    """Fill clients, activations and the aggregate tables; returns samples for the queries."""
    seeded = Seeded()
    catalogue = products()
    hours: dict[tuple[datetime, str], int] = {}
    product_totals: dict[tuple[str, str], int] = {}
    totals: dict[str, int] = {}
    family_of = {p.name: p.family for p in catalogue[0]}
    started = time.perf_counter()
    for start in range(0, total, CHUNK):
        count = min(CHUNK, total - start)
        client_rows, activation_rows = generate(rng, start, count, catalogue)
        await bulk_insert(store, clients, client_rows)
        await bulk_insert(store, activations, activation_rows)
        for row in activation_rows:
            hour = (row["time"].replace(minute=0, second=0, microsecond=0), row["node"])
            hours[hour] = hours.get(hour, 0) + 1
            key = (family_of[row["sku_name"]], row["sku_name"])
            product_totals[key] = product_totals.get(key, 0) + 1
            for name in ("activations", f"result:{row['result']}", f"protocol:{row['protocol']}"):
                totals[name] = totals.get(name, 0) + 1
        seeded.clients += len(client_rows)
        seeded.activations += len(activation_rows)
        for row in rng.sample(client_rows, min(20, len(client_rows))):
            seeded.sample_cmids.append(row["cmid"])
            seeded.sample_names.append(row["machine_name"])
            seeded.sample_addresses.append(row["last_address"])
        print(
            f"  {seeded.clients:>9,} clients {seeded.activations:>10,} activations "
            f"{time.perf_counter() - started:7.1f} s",
            flush=True,
        )
    totals["clients"] = seeded.clients
    await bulk_insert(store, counters, [{"name": k, "value": v} for k, v in totals.items()])
    await bulk_insert(
        store,
        activation_hours,
        [{"hour": h, "node": n, "count": c} for (h, n), c in sorted(hours.items())],
    )
    await bulk_insert(
        store,
        product_counts,
        [{"family": f, "sku_name": s, "count": c} for (f, s), c in product_totals.items()],
    )
    await store.optimize()
    seeded.seconds = time.perf_counter() - started
    return seeded


Query = Callable[[int], Awaitable[object]]


async def timed(label: str, call: Query, iterations: int) -> tuple[str, float, float, int]:
    """p50 and p95 in milliseconds over up to `iterations` calls (and TIME_BUDGET seconds)."""
    await call(0)  # warm the connection pool and caches once
    samples: list[float] = []
    deadline = time.perf_counter() + TIME_BUDGET
    for i in range(iterations):
        start = time.perf_counter()
        await call(i)
        samples.append((time.perf_counter() - start) * 1000)
        if time.perf_counter() > deadline and len(samples) >= 5:
            break
    samples.sort()
    p95 = samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))]
    return label, statistics.median(samples), p95, len(samples)


async def deep_cursor(store: Store, sort: str, pages: int) -> str:
    """The cursor `pages` pages into a listing (walked once, as a user paging would)."""
    cursor: str | None = None
    for _ in range(pages):
        page = await store.list_clients(sort=sort, cursor=cursor, limit=50)  # type: ignore[arg-type]
        assert page.next_cursor is not None
        cursor = page.next_cursor
    assert cursor is not None
    return cursor


def batch_of(rng: random.Random, seeded: Seeded, size: int) -> list[ActivationRecord]:
    """A realistic flush: mostly returning clients, some new ones."""
    skus, weights = products()
    out = []
    for _ in range(size):
        product = rng.choices(skus, weights)[0]
        known = rng.random() < 0.8
        out.append(
            ActivationRecord(
                time=NOW + timedelta(seconds=rng.randrange(3600)),
                client_machine_id=rng.choice(seeded.sample_cmids) if known else uuid.uuid4(),
                machine_name=machine_name(rng, rng.randrange(10**6)),
                address=f"10.9.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                application_id=product.application_id,
                sku_id=product.sku_id,
                sku_name=product.name,
                kms_id=product.kms_id,
                product_family=product.family,
                license_status=1,
                protocol=6,
                result="activated",
                hresult=0,
                epid=None,
                node="bench",
            )
        )
    return out


async def measure(store: Store, seeded: Seeded, iterations: int) -> list[tuple[Any, ...]]:
    rng = random.Random(7)
    results = []

    def pick(items: list[Any]) -> Callable[[int], Any]:
        return lambda i: items[i % len(items)]

    cmid = pick(seeded.sample_cmids)

    def page(sort: str, descending: bool = True, cursor: str | None = None) -> Query:
        async def call(_i: int) -> object:
            return await store.list_clients(
                sort=sort,  # type: ignore[arg-type]
                descending=descending,
                cursor=cursor,
            )

        return call

    def search(term: Callable[[int], str]) -> Query:
        async def call(i: int) -> object:
            return await store.list_clients(search=term(i))

        return call

    for sort in ("last_seen", "first_seen", "machine_name", "sku_name", "request_count"):
        for descending in (True, False):
            direction = "desc" if descending else "asc"
            results.append(
                await timed(
                    f"list_clients first page {sort} {direction}",
                    page(sort, descending),
                    iterations,
                )
            )
    for sort in ("last_seen", "machine_name"):
        deep = await deep_cursor(store, sort, 200)
        results.append(
            await timed(
                f"list_clients page 201 via cursor ({sort})",
                page(sort, cursor=deep),
                iterations,
            )
        )
    names = [n[3:9] for n in seeded.sample_names]  # a 6-char substring of a real name
    searches: list[tuple[str, Callable[[int], str]]] = [
        ("search: name substring (rare)", lambda i: names[i % len(names)]),
        ("search: common word 'laptop'", lambda _i: "laptop"),
        ("search: address prefix", lambda i: pick(seeded.sample_addresses)(i).rsplit(".", 1)[0]),
        ("search: exact CMID", lambda i: str(cmid(i))),
        ("search: no match", lambda _i: "zz-no-such-machine"),
    ]
    for label, term in searches:
        results.append(await timed(label, search(term), iterations))
    results.append(await timed("get_client", lambda i: store.get_client(cmid(i)), iterations))
    results.append(
        await timed("client_history", lambda i: store.client_history(cmid(i)), iterations)
    )
    results.append(await timed("list_activations", lambda _i: store.list_activations(), iterations))
    results.append(
        await timed(
            "list_activations refused",
            lambda _i: store.list_activations(result="refused"),
            iterations,
        )
    )
    results.append(await timed("stats", lambda _i: store.stats(NOW), iterations))
    batches = [batch_of(rng, seeded, 500) for _ in range(min(iterations, 50))]
    results.append(
        await timed(
            "record_activations (500/batch)",
            lambda i: store.record_activations(batches[i % len(batches)]),
            len(batches),
        )
    )
    return results


async def database_size(store: Store, sqlite_path: Path | None) -> str:
    if store.dialect == "postgresql":
        async with store.engine.connect() as conn:
            total = (
                await conn.execute(select(func.pg_database_size(func.current_database())))
            ).scalar()
            parts = []
            for table in (clients, activations):
                size = (
                    await conn.execute(select(func.pg_total_relation_size(table.name)))
                ).scalar()
                parts.append(f"{table.name} {int(size or 0) / 2**20:.0f} MiB")
        return f"{int(total or 0) / 2**20:.0f} MiB ({', '.join(parts)}, with indexes)"
    assert sqlite_path is not None
    files = [p for p in sqlite_path.parent.glob(sqlite_path.name + "*") if p.is_file()]
    return f"{sum(p.stat().st_size for p in files) / 2**20:.0f} MiB (file + WAL)"


async def samples_from(store: Store) -> Seeded:
    """Query samples from an already seeded database (--reuse)."""
    seeded = Seeded()
    stats = await store.stats(NOW)
    seeded.clients, seeded.activations = stats.clients, stats.activations
    for sort in ("machine_name", "last_seen", "sku_name", "first_seen"):
        for row in (await store.list_clients(sort=sort, limit=100)).items:
            seeded.sample_cmids.append(row.cmid)
            seeded.sample_names.append(row.machine_name)
            seeded.sample_addresses.append(row.last_address)
    return seeded


async def run_backend(
    url: str, clients_n: int, iterations: int, sqlite_path: Path | None, reuse: bool = False
) -> None:
    store = await Store.open(url)
    try:
        if reuse and (await store.stats(NOW)).clients >= clients_n:
            seeded = await samples_from(store)
            print(f"== {store.dialect}: reusing {seeded.clients:,} clients", flush=True)
        else:
            print(f"== {store.dialect}: seeding {clients_n:,} clients", flush=True)
            seeded = await seed(store, clients_n, random.Random(1))
        print(
            f"seeded {seeded.clients:,} clients and {seeded.activations:,} activations "
            f"in {seeded.seconds:.1f} s; size {await database_size(store, sqlite_path)}"
        )
        print(f"{'query':<46} {'p50 ms':>8} {'p95 ms':>8} {'n':>5}")
        for label, p50, p95, n in await measure(store, seeded, iterations):
            print(f"{label:<46} {p50:8.2f} {p95:8.2f} {n:5d}", flush=True)
    finally:
        await store.close()


def pg_server(workdir: Path) -> Iterator[str]:
    """A throwaway server tuned like a small production box (durable: fsync stays on)."""
    from tests.support.postgres import PostgresServer, require_bindir

    server = PostgresServer(
        require_bindir(),
        settings=("shared_buffers=512MB", "effective_cache_size=4GB", "max_wal_size=4GB"),
    )
    try:
        server.start()
        yield server.create_database("kmsgate_bench")
    finally:
        server.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--clients", type=int, default=1_000_000)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--pg-url", help="an existing, empty PostgreSQL database to use")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/kmsgate-bench"))
    parser.add_argument(
        "--keep", action="store_true", help="keep the SQLite file and reuse it when seeded"
    )
    args = parser.parse_args()
    clients_n = max(1, min(args.clients, MAX_CLIENTS))
    iterations = max(5, min(args.iterations, MAX_ITERATIONS))
    if args.backend in ("sqlite", "both"):
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
        path = args.workdir / "kmsgate.db"
        asyncio.run(run_backend(f"sqlite:///{path}", clients_n, iterations, path, args.keep))
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    if args.backend in ("postgresql", "both"):
        if args.pg_url:
            asyncio.run(run_backend(args.pg_url, clients_n, iterations, None))
        else:
            for url in pg_server(args.workdir):
                asyncio.run(run_backend(url, clients_n, iterations, None))


if __name__ == "__main__":
    main()
