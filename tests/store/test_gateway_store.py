"""Gateway records on SQLite and PostgreSQL: windows consumed once, expiry, quotas, audit."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from kmsgate.store import InvalidCursor, Store, UserNotFound
from kmsgate.store.gateway import AuditEvent, GatewayStore

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


async def test_quota_usage_counts_consumed_windows_in_rolling_periods(store: Store) -> None:
    gateway = GatewayStore(store)
    for days_ago in (40, 20, 3, 1):
        when = NOW - timedelta(days=days_ago)
        await gateway.grant_window("erin", "10.0.1.1", when, FIVE_MINUTES)
        assert await gateway.consume_window("10.0.1.1", when, "n1") is not None
    await gateway.grant_window("erin", "10.0.1.1", NOW, FIVE_MINUTES)  # granted, unused
    usage = await gateway.quota_usage("erin", NOW)
    assert (usage.week_used, usage.month_used) == (2, 3)
    assert usage.week_resets_at == NOW - timedelta(days=3) + timedelta(days=7)
    assert usage.month_resets_at == NOW - timedelta(days=20) + timedelta(days=30)
    empty = await gateway.quota_usage("nobody", NOW)
    assert (empty.week_used, empty.week_resets_at) == (0, None)


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
