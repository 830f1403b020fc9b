"""The audit trail: login, window and activation events, appended and listed newest first."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncConnection

from kmsgate.net import canonical_address
from kmsgate.store import cursor as cursors
from kmsgate.store.counts import add_counts
from kmsgate.store.engine import Dialect
from kmsgate.store.errors import InvalidCursor
from kmsgate.store.records import Page
from kmsgate.store.schema import audit_events, counters


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
    count: int = 1  # events this row stands for (refused connections of one source and minute)


# The counters row totalling gateway connections refused without a window.
REFUSED_CONNECTIONS = "gateway:refused_connections"

AUDIT_KINDS = (
    "login_ok",
    "login_failed",
    "login_locked",
    "login_over_quota",
    "window_granted",
    "window_consumed",
    "window_expired",
    "window_released",
    "connection_refused",
    "activation",
    "logout",
    "user_added",
    "user_removed",
    "password_changed",
    "quota_changed",
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
        count=row.count,
    )


def audit_rows(events: Sequence[AuditEvent]) -> list[dict[str, Any]]:
    """The audit_events rows of `events`: canonical addresses, details cut to 500 chars."""
    return [
        {
            "time": e.time,
            "kind": e.kind,
            "node": e.node,
            "username": e.username,
            "address": canonical_address(e.address) if e.address else e.address,
            "backend": e.backend,
            "window_id": e.window_id,
            "cmid": e.cmid,
            "machine_name": e.machine_name,
            "product": e.product,
            "result": e.result,
            "detail": e.detail[:500],
            "count": e.count,
        }
        for e in events
    ]


async def insert_audit(
    conn: AsyncConnection, dialect: Dialect, rows: Sequence[dict[str, Any]]
) -> None:
    """Append audit rows (see audit_rows) inside the caller's write transaction."""
    refused = sum(r["count"] for r in rows if r["kind"] == "connection_refused")
    await conn.execute(audit_events.insert(), list(rows))
    if refused:
        # A lifetime total, like the activation counters: the dashboard and /api/stats
        # read it in O(1), and retention pruning old audit rows does not lower it.
        await add_counts(
            conn, dialect, counters, ["name"], "value",
            [{"name": REFUSED_CONNECTIONS, "value": refused}],
        )  # fmt: skip


def audit_query(
    *,
    username: str | None,
    address: str | None,
    kind: str | None,
    since: datetime | None,
    until: datetime | None,
    cursor: str | None,
    limit: int,
) -> tuple[Select[Any], str]:
    """The SELECT of one page (limit + 1 rows, newest first) and its cursor scope."""
    if not 1 <= limit <= 1000:
        raise ValueError("limit must be between 1 and 1000")
    conditions = []
    if username is not None:
        conditions.append(audit_events.c.username == username)
    if address is not None:
        conditions.append(audit_events.c.address == canonical_address(address))
    if kind is not None:
        conditions.append(audit_events.c.kind == kind)
    if since is not None:
        conditions.append(audit_events.c.time >= since)
    if until is not None:
        conditions.append(audit_events.c.time < until)
    scope = cursors.scope_of(username, address, kind, since, until)
    if cursor is not None:
        decoded = cursors.decode(cursor, listing="audit", order="id:desc", scope=scope, key_len=1)
        if not isinstance(decoded.key[0], int):
            raise InvalidCursor("cursor key is malformed")
        conditions.append(audit_events.c.id < decoded.key[0])
    query = (
        select(audit_events).where(*conditions).order_by(audit_events.c.id.desc()).limit(limit + 1)
    )
    return query, scope


def audit_page(rows: Sequence[Any], limit: int, scope: str) -> Page[AuditEvent]:
    """The page of the fetched rows, with the cursor to the next (older) one."""
    items = [_event(row) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = cursors.encode(
            cursors.Cursor("audit", "id:desc", scope, "next", (int(items[-1].id or 0),))
        )
    return Page(items, next_cursor, None, None)
