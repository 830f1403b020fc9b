"""Gateway records on SQLite and PostgreSQL: windows consumed once, expiry, quotas, audit."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from kmsgate.store.audit import AuditEvent
from kmsgate.store.database import Store
from kmsgate.store.errors import InvalidCursor, UserNotFound
from kmsgate.store.gateway import SPEND_GRACE, GatewayStore, Grant

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
FIVE_MINUTES = timedelta(minutes=5)


async def test_window_is_consumed_exactly_once(store: Store) -> None:
    gateway = GatewayStore(store)
    granted = await gateway.grant_window("alice", "10.0.0.5", NOW, FIVE_MINUTES)
    assert granted.expires_at == NOW + FIVE_MINUTES
    assert await gateway.consume_window("10.0.0.6", NOW, "n1") is None  # other address
    taken = await gateway.consume_window("10.0.0.5", NOW + timedelta(seconds=30), "n1")
    assert taken is not None and (taken.id, taken.username, taken.consumed_node) == (
        granted.id,
        "alice",
        "n1",
    )
    assert await gateway.consume_window("10.0.0.5", NOW + timedelta(seconds=31), "n1") is None


async def test_window_expires_unused_and_is_reported_once(store: Store) -> None:
    gateway = GatewayStore(store)
    granted = await gateway.grant_window("bob", "10.0.0.7", NOW, FIVE_MINUTES)
    later = NOW + FIVE_MINUTES
    assert await gateway.consume_window("10.0.0.7", later, "n1") is None
    assert [w.id for w in await gateway.expire_windows(later)] == [granted.id]
    assert await gateway.expire_windows(later + timedelta(minutes=1)) == []


async def test_new_login_supersedes_the_unused_window(store: Store) -> None:
    gateway = GatewayStore(store)
    first = await gateway.grant_window("carol", "10.0.0.8", NOW, FIVE_MINUTES)
    second = await gateway.grant_window(
        "carol", "10.0.0.8", NOW + timedelta(seconds=5), FIVE_MINUTES
    )
    taken = await gateway.consume_window("10.0.0.8", NOW + timedelta(seconds=6), "n1")
    assert taken is not None and taken.id == second.id != first.id
    assert await gateway.consume_window("10.0.0.8", NOW + timedelta(seconds=7), "n1") is None


async def test_racing_consumers_get_one_window(store: Store, db_url: str) -> None:
    other = await Store.open(db_url)  # a second node with its own connection pool
    try:
        gateways = [GatewayStore(store), GatewayStore(other)]
        await gateways[0].grant_window("dave", "10.0.0.9", NOW, FIVE_MINUTES)
        results = await asyncio.gather(
            *(gateways[i % 2].consume_window("10.0.0.9", NOW, f"n{i}") for i in range(8))
        )
        assert sum(r is not None for r in results) == 1
    finally:
        await other.close()


async def test_quota_usage_counts_spent_windows_in_rolling_periods(store: Store) -> None:
    gateway = GatewayStore(store)
    for days_ago in (40, 20, 3, 1):
        when = NOW - timedelta(days=days_ago)
        await gateway.grant_window("erin", "10.0.1.1", when, FIVE_MINUTES)
        taken = await gateway.consume_window("10.0.1.1", when, "n1")
        assert taken is not None and await gateway.spend_window(taken.id, when)
    # Admitted two days ago but never served: it stopped counting when it ended.
    await gateway.grant_window("erin", "10.0.1.1", NOW - timedelta(days=2), FIVE_MINUTES)
    assert await gateway.consume_window("10.0.1.1", NOW - timedelta(days=2), "n1") is not None
    open_window = await gateway.grant_window("erin", "10.0.1.1", NOW, FIVE_MINUTES)
    usage = await gateway.quota_usage("erin", NOW)
    assert (usage.week_used, usage.month_used) == (2, 3)
    assert usage.week_resets_at == NOW - timedelta(days=3) + timedelta(days=7)
    assert usage.month_resets_at == NOW - timedelta(days=20) + timedelta(days=30)
    assert (usage.open_windows, usage.open_until) == (1, open_window.expires_at)
    empty = await gateway.quota_usage("nobody", NOW)
    assert (empty.week_used, empty.week_resets_at, empty.open_windows) == (0, None, 0)


async def test_quota_overrides(store: Store) -> None:
    gateway = GatewayStore(store)
    await store.add_user("frank", "$argon2id$fake")
    assert await gateway.get_quota("frank") == (None, None)
    await gateway.set_quota("frank", 2, 5)
    assert await gateway.get_quota("frank") == (2, 5)
    with pytest.raises(UserNotFound):
        await gateway.set_quota("ghost", 1, 1)


async def test_audit_trail_filters_and_pages(store: Store) -> None:
    gateway = GatewayStore(store)
    cmid = uuid.uuid4()
    events = [
        AuditEvent(NOW + timedelta(seconds=i), kind, "n1", username=user, address="10.0.2.2",
                   cmid=cmid if kind == "activation" else None)
        for i, (kind, user) in enumerate(
            [("login_failed", "gina"), ("login_ok", "gina"), ("window_granted", "gina"),
             ("activation", "gina"), ("login_ok", "hank")]
        )
    ]  # fmt: skip
    await gateway.add_audit(events)
    page = await gateway.list_audit(username="gina", limit=2)
    assert [e.kind for e in page.items] == ["activation", "window_granted"]
    assert page.items[0].cmid == cmid
    assert page.next_cursor is not None
    rest = await gateway.list_audit(username="gina", cursor=page.next_cursor, limit=2)
    assert [e.kind for e in rest.items] == ["login_ok", "login_failed"]
    assert rest.next_cursor is None
    with pytest.raises(InvalidCursor):
        await gateway.list_audit(username="hank", cursor=page.next_cursor)
    since = await gateway.list_audit(since=NOW + timedelta(seconds=4))
    assert [e.username for e in since.items] == ["hank"]


async def test_open_windows_take_the_quota(store: Store) -> None:
    gateway = GatewayStore(store)

    async def login(address: str, at: datetime) -> Grant:
        return await gateway.grant_within_quota(
            "ivan", address, at, FIVE_MINUTES, quota_week=1, quota_month=None
        )

    first = await login("10.0.3.1", NOW)
    assert first.window is not None and first.over is None
    # Another address while the first window is open: the quota of 1 is taken.
    second = await login("10.0.3.2", NOW + timedelta(seconds=1))
    assert second.window is None and second.over == "weekly"
    assert (second.usage.week_used, second.usage.open_windows) == (0, 1)
    assert second.usage.open_until == first.window.expires_at
    # The same address again replaces its unused window, so that is allowed.
    again = await login("10.0.3.1", NOW + timedelta(seconds=2))
    assert again.window is not None and again.usage.open_windows == 0
    # Admitted but not (yet) served: still counts, also a little after its end.
    taken = await gateway.consume_window("10.0.3.1", NOW + timedelta(seconds=3), "n1")
    assert taken is not None and taken.id == again.window.id
    after_end = again.window.expires_at + timedelta(seconds=1)
    assert (await login("10.0.3.2", after_end)).over == "weekly"
    # Never reported spent: after the grace the quota is free again.
    assert (await login("10.0.3.2", after_end + SPEND_GRACE)).window is not None


async def test_spent_window_counts_and_released_one_does_not(store: Store) -> None:
    gateway = GatewayStore(store)
    granted = await gateway.grant_window("judy", "10.0.4.1", NOW, FIVE_MINUTES)
    taken = await gateway.consume_window("10.0.4.1", NOW, "n1")
    assert taken is not None
    # Released before its end: open again, and a second connection may take it.
    reopened = await gateway.release_window(granted.id, NOW + timedelta(seconds=10))
    assert reopened is not None and reopened.consumed_at is None
    retaken = await gateway.consume_window("10.0.4.1", NOW + timedelta(seconds=11), "n2")
    assert retaken is not None and retaken.id == granted.id
    assert await gateway.spend_window(granted.id, NOW + timedelta(seconds=12))
    assert not await gateway.spend_window(granted.id, NOW + timedelta(seconds=13))
    assert await gateway.release_window(granted.id, NOW + timedelta(seconds=14)) is None
    usage = await gateway.quota_usage("judy", NOW + timedelta(hours=1))
    assert (usage.week_used, usage.open_windows) == (1, 0)

    # Released after its end: the quota is given back, and no window_expired follows.
    other = await gateway.grant_window("judy", "10.0.4.2", NOW, FIVE_MINUTES)
    assert await gateway.consume_window("10.0.4.2", NOW, "n1") is not None
    late = NOW + FIVE_MINUTES + timedelta(seconds=5)
    assert (await gateway.release_window(other.id, late)) is not None
    assert await gateway.consume_window("10.0.4.2", late, "n1") is None
    assert await gateway.expire_windows(late) == []
    usage = await gateway.quota_usage("judy", late)
    assert (usage.week_used, usage.open_windows) == (1, 0)


async def test_racing_logins_of_one_user_get_one_window(store: Store, db_url: str) -> None:
    """Check-and-grant is one transaction: two nodes (two pools) cannot both pass quota 1."""
    other = await Store.open(db_url)
    try:
        gateways = [GatewayStore(store), GatewayStore(other)]
        grants = await asyncio.gather(
            *(
                gateways[i % 2].grant_within_quota(
                    "kate", f"10.0.5.{i}", NOW, FIVE_MINUTES, quota_week=1, quota_month=None
                )
                for i in range(8)
            )
        )
        assert sum(g.window is not None for g in grants) == 1
        assert (await gateways[0].quota_usage("kate", NOW)).open_windows == 1
    finally:
        await other.close()


async def test_audit_rows_keep_their_count_and_canonical_addresses(store: Store) -> None:
    gateway = GatewayStore(store)
    await gateway.add_audit(
        [AuditEvent(NOW, "connection_refused", "n1", address="::ffff:10.0.6.1", count=1500)]
    )
    page = await gateway.list_audit(address="::ffff:10.0.6.1")
    assert [(e.address, e.count) for e in page.items] == [("10.0.6.1", 1500)]
    assert (await gateway.grant_window("lea", "::ffff:10.0.6.2", NOW, FIVE_MINUTES)).address == (
        "10.0.6.2"
    )
    assert await gateway.consume_window("10.0.6.2", NOW, "n1") is not None


async def test_refused_connections_are_a_lifetime_total_in_stats(store: Store) -> None:
    gateway = GatewayStore(store)
    assert (await store.stats(NOW)).refused_connections == 0
    await gateway.add_audit(
        [
            AuditEvent(NOW, "connection_refused", "n1", address="10.0.7.1", count=1500),
            AuditEvent(NOW, "connection_refused", "n1", address="10.0.7.2", count=3),
            AuditEvent(NOW, "login_failed", "n1", username="eve", address="10.0.7.3"),
        ]
    )
    await gateway.add_audit([AuditEvent(NOW, "connection_refused", "n2", count=7)])
    stats = await store.stats(NOW)
    assert stats.refused_connections == 1510
    assert stats.refusals == 0  # refused KMS requests are counted apart
