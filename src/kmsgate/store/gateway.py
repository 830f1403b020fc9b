"""Gateway records: activation windows (granted, admitted, spent or released) and quotas.

A window's life: granted at login; admitted (`consumed_at`) when a connection takes it; spent
(`spent_at`) by the first activation served on that connection; or released (back to open)
when the connection ends without one. The quota counts spent windows plus those that may
still be spent: open ones, and admitted ones until their end plus SPEND_GRACE. The audit
trail's rows and queries are in audit.py; GatewayStore runs them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, not_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from kmsgate.net import canonical_address
from kmsgate.store.audit import AuditEvent, audit_page, audit_query, audit_rows, insert_audit
from kmsgate.store.database import Store
from kmsgate.store.errors import UserNotFound
from kmsgate.store.records import Page
from kmsgate.store.schema import users, windows

WEEK = timedelta(days=7)
MONTH = timedelta(days=30)
# An admitted window that its node has not (yet) reported spent or released keeps counting
# this long after its end: the node writes `spent_at` within moments of serving, and a node
# that died with the connection open must not hold the user's quota forever.
SPEND_GRACE = timedelta(seconds=60)


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
    spent_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    """Spent windows in the rolling week and month (and when the oldest stops counting), plus
    windows still open or admitted that may yet be spent (they count against the quota too)."""

    week_used: int
    month_used: int
    week_resets_at: datetime | None
    month_resets_at: datetime | None
    open_windows: int = 0
    open_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Grant:
    """A login's quota check and grant, made in one transaction: the window, or why not."""

    usage: QuotaUsage
    quota_week: int | None
    quota_month: int | None
    window: Window | None = None
    over: str | None = None  # "weekly" or "monthly" when the quota is taken


def _window(row: Any) -> Window:
    return Window(
        id=row.id,
        username=row.username,
        address=row.address,
        granted_at=row.granted_at,
        expires_at=row.expires_at,
        consumed_at=row.consumed_at,
        consumed_node=row.consumed_node,
        spent_at=row.spent_at,
    )


def _quota_lock_key(username: str) -> int:
    """A stable signed 64-bit advisory-lock key for one user's quota (PostgreSQL)."""
    digest = hashlib.blake2b(b"kmsgate-quota\0" + username.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _count(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


class GatewayStore:
    """Repository functions of the gateway over an open Store (same engine, same dialects)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def grant_window(
        self, username: str, address: str, now: datetime, duration: timedelta
    ) -> Window:
        """Open a window for `address` without a quota check (see grant_within_quota)."""
        async with self._store._write() as conn:
            return await self._grant(conn, username, canonical_address(address), now, duration)

    async def grant_within_quota(
        self,
        username: str,
        address: str,
        now: datetime,
        duration: timedelta,
        *,
        quota_week: int | None,
        quota_month: int | None,
    ) -> Grant:
        """Check the user's quota and open the window in one transaction, atomic across nodes.

        `quota_week` / `quota_month` are the host-wide limits; the user's overrides win. The
        quota is taken when spent windows plus windows that may still be spent reach it; an
        unused window of the same address does not count, as the new one replaces it.
        """
        address = canonical_address(address)
        async with self._store._write() as conn:
            if self._store.dialect == "postgresql":
                # Serialises check-and-grant per user across nodes (held until commit). A lock
                # on the users row would do for local accounts only: LDAP, POP3 and SQL users
                # have no row here. SQLite's BEGIN IMMEDIATE already serialises all writers.
                await conn.execute(select(func.pg_advisory_xact_lock(_quota_lock_key(username))))
            query = select(users.c.quota_week, users.c.quota_month).where(users.c.name == username)
            row = (await conn.execute(query)).one_or_none()
            week = row.quota_week if row is not None and row.quota_week is not None else quota_week
            month = (
                row.quota_month if row is not None and row.quota_month is not None else quota_month
            )
            usage = await self._usage(conn, username, now, replaced_at=address)
            over = None
            if week is not None and usage.week_used + usage.open_windows >= week:
                over = "weekly"
            elif month is not None and usage.month_used + usage.open_windows >= month:
                over = "monthly"
            if over is not None:
                return Grant(usage, week, month, None, over)
            window = await self._grant(conn, username, address, now, duration)
            return Grant(usage, week, month, window)

    async def _grant(
        self,
        conn: AsyncConnection,
        username: str,
        address: str,
        now: datetime,
        duration: timedelta,
    ) -> Window:
        """Insert a window; an earlier unused one of the same user and address is superseded."""
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
        address = canonical_address(address)
        open_windows = (
            select(windows.c.id)
            .where(
                windows.c.address == address,
                windows.c.consumed_at.is_(None),
                windows.c.expires_at > now,
            )
            .order_by(windows.c.granted_at.desc(), windows.c.id.desc())
            .limit(1)
        )
        # A read first: a flood of connections without a window then never queues for the
        # write lock (SQLite has one per database), which real admissions need.
        async with self._store._read() as conn:
            if (await conn.execute(open_windows)).first() is None:
                return None
        newest = open_windows.scalar_subquery()
        async with self._store._write() as conn:
            result = await conn.execute(
                update(windows)
                .where(windows.c.id == newest, windows.c.consumed_at.is_(None))
                .values(consumed_at=now, consumed_node=node)
                .returning(*windows.c)
            )
            row = result.one_or_none()
            return _window(row) if row is not None else None

    async def spend_window(self, window_id: int, at: datetime) -> bool:
        """Mark the window spent by a served activation; False when it already was."""
        async with self._store._write() as conn:
            result = await conn.execute(
                update(windows)
                .where(windows.c.id == window_id, windows.c.spent_at.is_(None))
                .values(spent_at=at)
            )
            return bool(result.rowcount)

    async def release_window(self, window_id: int, now: datetime) -> Window | None:
        """An admitted window whose connection ended unserved: open again until its end (or,
        when past it, ended unused, which gives the quota back). None if spent or not admitted.
        """
        async with self._store._write() as conn:
            result = await conn.execute(
                update(windows)
                .where(
                    windows.c.id == window_id,
                    windows.c.spent_at.is_(None),
                    windows.c.consumed_at.is_not(None),
                )
                .values(
                    consumed_at=None,
                    consumed_node=None,
                    # Already ended: the release's audit row says so; no window_expired later.
                    expired_noted=case((windows.c.expires_at <= now, True), else_=False),
                )
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
        """Windows the user spent in the last 7 and 30 days, and those that may yet be spent."""
        async with self._store._read() as conn:
            return await self._usage(conn, username, now)

    async def _usage(
        self,
        conn: AsyncConnection,
        username: str,
        now: datetime,
        replaced_at: str | None = None,
    ) -> QuotaUsage:
        """One SELECT, so that its counts come from one snapshot. `replaced_at`: an address
        whose unused window a new grant replaces, so it does not count."""
        c = windows.c
        week_since, month_since = now - WEEK, now - MONTH
        spent_week = c.spent_at > week_since
        spent_month = c.spent_at > month_since
        pending = and_(
            c.spent_at.is_(None),
            or_(
                and_(c.consumed_at.is_(None), c.expires_at > now),
                and_(c.consumed_at.is_not(None), c.expires_at > now - SPEND_GRACE),
            ),
        )
        if replaced_at is not None:
            pending = and_(pending, not_(and_(c.address == replaced_at, c.consumed_at.is_(None))))
        query = select(
            _count(spent_week),
            _count(spent_month),
            _count(pending),
            func.min(case((spent_week, c.spent_at))),
            func.min(case((spent_month, c.spent_at))),
            func.min(case((pending, c.expires_at))),
        ).where(
            c.username == username,
            or_(c.spent_at > month_since, c.expires_at > now - SPEND_GRACE),
        )
        week, month, pending_count, oldest_week, oldest_month, open_until = (
            await conn.execute(query)
        ).one()
        return QuotaUsage(
            int(week),
            int(month),
            oldest_week + WEEK if oldest_week is not None else None,
            oldest_month + MONTH if oldest_month is not None else None,
            int(pending_count),
            open_until,
        )

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
        rows = audit_rows(events)
        async with self._store._write() as conn:
            await insert_audit(conn, self._store.dialect, rows)

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
        query, scope = audit_query(
            username=username,
            address=address,
            kind=kind,
            since=since,
            until=until,
            cursor=cursor,
            limit=limit,
        )
        async with self._store._read() as conn:
            rows = (await conn.execute(query)).all()
        return audit_page(rows, limit, scope)
