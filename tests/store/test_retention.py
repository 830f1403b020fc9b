"""--retention-days on SQLite and PostgreSQL: what goes, what stays, and exact totals."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from kmsgate.recording.writer import RecordWriter
from kmsgate.store.audit import AuditEvent
from kmsgate.store.database import Store
from kmsgate.store.gateway import GatewayStore
from kmsgate.store.retention import Retention
from tests.store.test_writer import wait_for
from tests.store.test_writer_process import unreachable_postgres
from tests.support.records import make_draft, make_record

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=500)
RECENT = NOW - timedelta(days=10)
DAYS = 400


async def seed(store: Store) -> dict[str, object]:
    """Old and recent activations, refusals, clients, audit rows and windows."""
    old_clients = [uuid.uuid4() for _ in range(30)]
    old = [
        make_record(
            time=OLD + timedelta(minutes=i),
            client_machine_id=cmid,
            machine_name=f"OLDPC-{i:02d}",
            result="refused" if i % 3 == 0 else "activated",
            hresult=0xC004F042 if i % 3 == 0 else 0,
        )
        for i, cmid in enumerate(old_clients)
    ]
    both = uuid.uuid4()  # seen long ago and recently: stays, with its recent requests only
    mixed = [
        make_record(time=OLD, client_machine_id=both, machine_name="LABPC"),
        make_record(time=OLD + timedelta(days=1), client_machine_id=both, machine_name="LABPC"),
        make_record(time=RECENT, client_machine_id=both, machine_name="LABPC"),
    ]
    recent = [
        make_record(
            time=RECENT + timedelta(minutes=i),
            machine_name=f"NEWPC-{i:02d}",
            result="refused" if i % 4 == 0 else "activated",
            hresult=0xC004F042 if i % 4 == 0 else 0,
        )
        for i in range(12)
    ]
    await store.record_activations(old + mixed + recent)
    gateway = GatewayStore(store)
    await gateway.add_audit(
        [AuditEvent(time=OLD + timedelta(seconds=i), kind="connection_refused", node="n",
                    address=f"10.0.0.{i}", detail="no window") for i in range(25)]
        + [AuditEvent(time=RECENT, kind="login_ok", node="n", username=f"u{i}", detail="")
           for i in range(5)]
    )  # fmt: skip
    for i in range(6):
        await gateway.grant_window(f"old{i}", f"10.1.0.{i}", OLD, timedelta(minutes=2))
    await gateway.grant_window("recent", "10.2.0.1", RECENT, timedelta(minutes=2))
    return {"both": both, "recent": recent, "old": old}


async def test_a_pass_deletes_what_is_older_and_keeps_totals_exact(store: Store) -> None:
    seeded = await seed(store)
    lifetime = await store.stats(NOW)
    retention = Retention(store, DAYS, batch_size=7, now=lambda: NOW)
    counts = await retention.run_pass()
    assert counts.deleted == {"activations": 32, "audit_events": 25, "clients": 30, "windows": 6}

    # Activations and refusals: only the recent ones, and the listing's totals are exact.
    page = await store.list_activations(limit=1000)
    assert {row.time for row in page.items} >= {RECENT}
    assert all(row.time >= NOW - timedelta(days=DAYS) for row in page.items)
    assert page.total == len(page.items) == 13
    refused = await store.list_activations(result="refused", limit=1000)
    assert refused.total == len(refused.items) == 3
    # Clients not seen within the retention are gone; the total counts the rest.
    clients = await store.list_clients(limit=1000)
    assert clients.total == len(clients.items) == 13
    assert (await store.list_clients(search="OLDPC")).items == []
    kept = await store.get_client(seeded["both"])  # type: ignore[arg-type]
    assert kept is not None and kept.last_seen == RECENT and kept.first_seen == OLD
    history = await store.client_history(seeded["both"])  # type: ignore[arg-type]
    assert [row.time for row in history.items] == [RECENT]
    # Lifetime figures of the dashboard are statistics, not records: they stay.
    after = await store.stats(NOW)
    assert (after.activations, after.refusals) == (lifetime.activations, lifetime.refusals)
    # Audit rows and windows.
    gateway = GatewayStore(store)
    audit = await gateway.list_audit(limit=100)
    assert {event.kind for event in audit.items} == {"login_ok"} and len(audit.items) == 5
    # A second pass finds nothing more.
    again = await retention.run_pass()
    assert again.total == 0 and retention.passes == 2


async def test_windows_stay_as_long_as_quotas_count_them(store: Store) -> None:
    gateway = GatewayStore(store)
    window = await gateway.grant_window(
        "alice", "10.9.0.1", NOW - timedelta(days=20), timedelta(minutes=2)
    )
    assert await gateway.consume_window("10.9.0.1", window.granted_at, "n") is not None
    assert await gateway.spend_window(window.id, window.granted_at)  # a served activation
    await gateway.grant_window("bob", "10.9.0.2", NOW - timedelta(days=40), timedelta(minutes=2))
    counts = await Retention(store, 7, now=lambda: NOW).run_pass()
    # A 7-day retention would hand alice's monthly quota back: her window stays 32 days.
    assert counts.deleted["windows"] == 1
    usage = await gateway.quota_usage("alice", NOW)
    assert usage.month_used == 1


async def test_two_nodes_pruning_at_once_delete_each_row_once(db_url: str) -> None:
    first, second = await Store.open(db_url), await Store.open(db_url, upgrade=False)
    try:
        await first.record_activations(
            [make_record(time=OLD + timedelta(seconds=i)) for i in range(600)]
            + [make_record(time=RECENT)]
        )
        passes = await asyncio.gather(
            Retention(first, DAYS, batch_size=25, now=lambda: NOW).run_pass(),
            Retention(second, DAYS, batch_size=25, now=lambda: NOW).run_pass(),
        )
        assert sum(p.deleted["activations"] for p in passes) == 600
        assert sum(p.deleted["clients"] for p in passes) == 600
        page = await first.list_activations(limit=10)
        assert page.total == len(page.items) == 1
        assert (await first.list_clients()).total == 1
    finally:
        await first.close()
        await second.close()


@pytest.mark.slow
async def test_the_writer_prunes_at_start_and_between_batches(store: Store) -> None:
    await store.record_activations(
        [make_record(time=OLD + timedelta(seconds=i)) for i in range(1500)]
    )
    wall = [NOW]
    retention = Retention(store, DAYS, batch_size=50, now=lambda: wall[0], interval=0.3)
    writer = RecordWriter(store, flush_interval=0.02, retention=retention)
    written_during_pass = 0
    await writer.start()
    try:
        # Records keep arriving while the pass deletes 1 500 rows (and 1 500 clients) in 60
        # small transactions: they are written meanwhile, not after the pass.
        for _ in range(300):
            writer.submit(make_draft(time=NOW))
            if retention.running:
                written_during_pass = writer.written
            await asyncio.sleep(0.005)
            if retention.passes:
                break
        await wait_for(lambda: retention.passes >= 1, timeout=60)
        assert written_during_pass > 0
        assert retention.last.deleted["activations"] == 1500
        # Then hourly (here: every 0.3 s), also while no record arrives.
        await store.record_activations([make_record(time=OLD)])
        await wait_for(lambda: retention.passes >= 2, timeout=10)
        assert retention.last.deleted["activations"] == 1
    finally:
        await writer.close()
    assert writer.dropped == 0
    assert (await store.list_activations(limit=1000)).total == writer.written


async def test_a_failing_database_delays_the_pass(caplog: pytest.LogCaptureFixture) -> None:
    down = await Store.open(unreachable_postgres(), upgrade=False)
    clock = [0.0]
    retention = Retention(down, DAYS, now=lambda: NOW, clock=lambda: clock[0])
    try:
        with caplog.at_level(logging.WARNING, logger="kmsgate.store"):
            await retention.step()  # never raises
        assert "retention pass stopped, retrying in 300 s" in caplog.text
        assert not retention.running and retention.due_in() == 300
    finally:
        await down.close()


async def test_retention_needs_positive_days(store: Store) -> None:
    with pytest.raises(ValueError, match="positive"):
        Retention(store, 0)
