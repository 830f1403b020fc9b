"""Gateway records: activation windows (granted, consumed once, expired), quotas, audit trail."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update

from kmsgate.store import cursor as cursors
from kmsgate.store.database import Store
from kmsgate.store.errors import InvalidCursor, UserNotFound
from kmsgate.store.records import Page
from kmsgate.store.schema import audit_events, users, windows

WEEK = timedelta(days=7)
MONTH = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class Window:
    """One login's right for its source address to activate once."""

    id: int
    username: str
    address: str
    granted_at: datetime
    expires_at: datetime
    consumed_at: datetime | None = None
    consumed_node: str | None = None


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    """Consumed windows in the rolling week and month, and when the oldest one stops counting."""

    week_used: int
    month_used: int
    week_resets_at: datetime | None
    month_resets_at: datetime | None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One line of the audit trail: login, window or activation, linked by user, IP and CMID."""

    time: datetime
    kind: str
    node: str
    username: str | None = None
    address: str | None = None
    backend: str | None = None
    window_id: int | None = None
    cmid: uuid.UUID | None = None
    machine_name: str | None = None
    product: str | None = None
    result: str | None = None
    detail: str = ""
    id: int | None = None


AUDIT_KINDS = (
    "login_ok",
    "login_failed",
    "login_locked",
    "login_over_quota",
    "window_granted",
    "window_consumed",
    "window_expired",
    "connection_refused",
    "activation",
)


def _window(row: Any) -> Window:
    return Window(
        id=row.id,
        username=row.username,
        address=row.address,
        granted_at=row.granted_at,
        expires_at=row.expires_at,
        consumed_at=row.consumed_at,
        consumed_node=row.consumed_node,
    )


def _event(row: Any) -> AuditEvent:
    return AuditEvent(
        id=row.id,
        time=row.time,
        kind=row.kind,
        node=row.node,
        username=row.username,
        address=row.address,
        backend=row.backend,
        window_id=row.window_id,
        cmid=row.cmid,
        machine_name=row.machine_name,
        product=row.product,
        result=row.result,
        detail=row.detail,
    )


class GatewayStore:
    """Repository functions of the gateway over an open Store (same engine, same dialects)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def grant_window(
        self, username: str, address: str, now: datetime, duration: timedelta
    ) -> Window:
        """Open a window for `address`; an earlier unused one of the same user is superseded."""
        async with self._store._write() as conn:
            await conn.execute(
                update(windows)
                .where(
                    windows.c.username == username,
                    windows.c.address == address,
                    windows.c.consumed_at.is_(None),
                    windows.c.expires_at > now,
                )
                .values(expires_at=now)
            )
            result = await conn.execute(
                windows.insert()
                .values(
                    username=username,
                    address=address,
                    granted_at=now,
                    expires_at=now + duration,
                    expired_noted=False,
                )
                .returning(*windows.c)
            )
            return _window(result.one())

    async def consume_window(self, address: str, now: datetime, node: str) -> Window | None:
        """Atomically take the newest open window of `address`, or None.

        The re-checked `consumed_at IS NULL` makes a racing node's UPDATE match nothing
        (PostgreSQL re-evaluates it after the row lock; SQLite serialises writers).
        """
        newest = (
            select(windows.c.id)
            .where(
                windows.c.address == address,
                windows.c.consumed_at.is_(None),
                windows.c.expires_at > now,
            )
            .order_by(windows.c.granted_at.desc(), windows.c.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        async with self._store._write() as conn:
            result = await conn.execute(
                update(windows)
                .where(windows.c.id == newest, windows.c.consumed_at.is_(None))
                .values(consumed_at=now, consumed_node=node)
                .returning(*windows.c)
            )
            row = result.one_or_none()
            return _window(row) if row is not None else None

    async def expire_windows(self, now: datetime) -> list[Window]:
        """Mark windows that ran out unused; each is returned once across all nodes."""
        async with self._store._write() as conn:
            result = await conn.execute(
                update(windows)
                .where(
                    windows.c.consumed_at.is_(None),
                    windows.c.expires_at <= now,
                    windows.c.expired_noted.is_(False),
                )
                .values(expired_noted=True)
                .returning(*windows.c)
            )
            return [_window(row) for row in result]

    async def quota_usage(self, username: str, now: datetime) -> QuotaUsage:
        """Windows the user consumed in the last 7 and 30 days."""

        async def window_count(period: timedelta) -> tuple[int, datetime | None]:
            since = now - period
            query = select(func.count(), func.min(windows.c.consumed_at)).where(
                windows.c.username == username, windows.c.consumed_at > since
            )
            async with self._store._read() as conn:
                count, oldest = (await conn.execute(query)).one()
            return int(count), (oldest + period if oldest is not None else None)

        week_used, week_reset = await window_count(WEEK)
        month_used, month_reset = await window_count(MONTH)
        return QuotaUsage(week_used, month_used, week_reset, month_reset)

    async def set_quota(self, username: str, week: int | None, month: int | None) -> None:
        """Per-user quota overrides (None: the host-wide default)."""
        async with self._store._write() as conn:
            result = await conn.execute(
                update(users)
                .where(users.c.name == username)
                .values(quota_week=week, quota_month=month)
            )
            if result.rowcount == 0:
                raise UserNotFound(username)

    async def get_quota(self, username: str) -> tuple[int | None, int | None]:
        """The user's overrides (week, month); (None, None) for unknown or default users."""
        query = select(users.c.quota_week, users.c.quota_month).where(users.c.name == username)
        async with self._store._read() as conn:
            row = (await conn.execute(query)).one_or_none()
        return (row.quota_week, row.quota_month) if row is not None else (None, None)

    async def add_audit(self, events: Sequence[AuditEvent]) -> None:
        """Append audit events in one transaction."""
        if not events:
            return
        rows = [
            {
                "time": e.time,
                "kind": e.kind,
                "node": e.node,
                "username": e.username,
                "address": e.address,
                "backend": e.backend,
                "window_id": e.window_id,
                "cmid": e.cmid,
                "machine_name": e.machine_name,
                "product": e.product,
                "result": e.result,
                "detail": e.detail[:500],
            }
            for e in events
        ]
        async with self._store._write() as conn:
            await conn.execute(audit_events.insert(), rows)

    async def count_audit(self, kind: str) -> int:
        """How many audit events of one kind exist (answered from the (kind, id) index)."""
        query = select(func.count()).select_from(audit_events).where(audit_events.c.kind == kind)
        async with self._store._read() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def list_audit(
        self,
        *,
        username: str | None = None,
        address: str | None = None,
        kind: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[AuditEvent]:
        """Newest first, keyset-paged by id."""
        if not 1 <= limit <= 1000:
            raise ValueError("limit must be between 1 and 1000")
        conditions = []
        if username is not None:
            conditions.append(audit_events.c.username == username)
        if address is not None:
            conditions.append(audit_events.c.address == address)
        if kind is not None:
            conditions.append(audit_events.c.kind == kind)
        if since is not None:
            conditions.append(audit_events.c.time >= since)
        if until is not None:
            conditions.append(audit_events.c.time < until)
        scope = cursors.scope_of(username, address, kind, since, until)
        if cursor is not None:
            decoded = cursors.decode(
                cursor, listing="audit", order="id:desc", scope=scope, key_len=1
            )
            if not isinstance(decoded.key[0], int):
                raise InvalidCursor("cursor key is malformed")
            conditions.append(audit_events.c.id < decoded.key[0])
        query = (
            select(audit_events)
            .where(*conditions)
            .order_by(audit_events.c.id.desc())
            .limit(limit + 1)
        )
        async with self._store._read() as conn:
            rows = (await conn.execute(query)).all()
        items = [_event(row) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            next_cursor = cursors.encode(
                cursors.Cursor("audit", "id:desc", scope, "next", (int(items[-1].id or 0),))
            )
        return Page(items, next_cursor, None, None)
