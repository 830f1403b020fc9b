"""The gateway's audit trail for administrators: /audit, /audit.csv and /api/audit."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Annotated, Literal, get_args

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Security
from fastapi.responses import HTMLResponse, StreamingResponse
from fastapi.security import APIKeyCookie
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from kmsgate.access.audit_csv import CSV_COLUMNS, csv_row
from kmsgate.store.gateway import AUDIT_KINDS, AuditEvent, GatewayStore
from kmsgate.store.records import Page
from kmsgate.web.api import (
    DEFAULT_LIMIT,
    NO_CONTROL_CHARS,
    CursorParam,
    ErrorModel,
    LimitParam,
    time_range,
)
from kmsgate.web.auth import Admin, Authenticator
from kmsgate.web.pages import LoginRequired, Renderer, url_with

AuditKind = Literal[
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
]
assert set(get_args(AuditKind)) == set(AUDIT_KINDS), "AuditKind is out of step with the store"

CSV_BATCH = 1000
UserParam = Annotated[
    str | None,
    Query(max_length=256, pattern=NO_CONTROL_CHARS, description="Only events of this user name."),
]
AddressParam = Annotated[
    str | None,
    Query(max_length=100, pattern=NO_CONTROL_CHARS, description="Only events of this IP address."),
]
KindParam = Annotated[AuditKind | None, Query(description="Only events of this kind.")]
AuditSinceParam = Annotated[
    datetime | None,
    Query(description="Only events at or after this time (ISO 8601; UTC if no offset)."),
]
AuditUntilParam = Annotated[
    datetime | None,
    Query(description="Only events before this time (ISO 8601; UTC if no offset)."),
]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class AuditEventModel(BaseModel):
    """One audit event: a login, a window or an activation, linked by user, address and CMID."""

    model_config = ConfigDict(frozen=True)

    id: int
    time: datetime
    kind: str
    node: str
    username: str | None
    address: str | None
    backend: str | None
    window_id: int | None
    cmid: uuid.UUID | None
    machine_name: str | None
    product: str | None
    result: str | None
    detail: str
    count: int = Field(1, description="Events the row stands for (refused connections per minute)")

    @classmethod
    def from_event(cls, event: AuditEvent) -> AuditEventModel:
        """Build from a store event."""
        return cls(
            id=event.id or 0,
            time=_utc(event.time),
            kind=event.kind,
            node=event.node,
            username=event.username,
            address=event.address,
            backend=event.backend,
            window_id=event.window_id,
            cmid=event.cmid,
            machine_name=event.machine_name,
            product=event.product,
            result=event.result,
            detail=event.detail,
            count=event.count,
        )


class AuditPage(BaseModel):
    """A page of audit events, newest first; pass next_cursor back as `cursor` for more."""

    items: list[AuditEventModel]
    next_cursor: str | None


def _form_time(value: datetime | None) -> str | None:
    # Full precision: paging cursors are bound to the exact filter values.
    return None if value is None else value.replace(tzinfo=None).isoformat()


def build_audit_router(
    store: GatewayStore, authenticator: Authenticator, renderer: Renderer
) -> APIRouter:
    """The admin-only audit routes: an HTML list, its CSV export and the JSON API."""
    session_cookie = APIKeyCookie(
        name=authenticator.codec.session_cookie,
        auto_error=False,
        description="Session cookie set by POST /login (admin users only).",
    )

    async def admin_page(request: Request) -> Admin:
        admin = await authenticator.current_admin(request)
        if admin is None:
            target = request.url.path
            if request.url.query:
                target += "?" + request.url.query
            raise LoginRequired(target)
        return admin

    async def admin_api(request: Request) -> Admin:
        admin = await authenticator.current_admin(request)
        if admin is None:
            raise HTTPException(401, "authentication required: log in at /login")
        return admin

    pages = APIRouter(dependencies=[Depends(admin_page)], include_in_schema=False)
    api = APIRouter(
        prefix="/api",
        tags=["audit"],
        dependencies=[Security(session_cookie), Depends(admin_api)],
        responses={
            400: {"model": ErrorModel, "description": "Bad paging cursor or parameter"},
            401: {"model": ErrorModel, "description": "Not logged in as an administrator"},
            503: {"model": ErrorModel, "description": "Database unavailable"},
        },
    )

    async def query(
        user: str | None,
        address: str | None,
        kind: str | None,
        since: datetime | None,
        until: datetime | None,
        cursor: str | None,
        limit: int,
    ) -> tuple[Page[AuditEvent], dict[str, object | None]]:
        start, end = time_range(since, until)
        username = (user or "").strip() or None
        ip = (address or "").strip() or None
        page = await store.list_audit(
            username=username,
            address=ip,
            kind=kind,
            since=start,
            until=end,
            cursor=cursor,
            limit=limit,
        )
        filters: dict[str, object | None] = {
            "user": username,
            "address": ip,
            "kind": kind,
            "since": _form_time(start),
            "until": _form_time(end),
        }
        return page, filters

    @pages.get("/audit", response_class=HTMLResponse)
    async def audit_page(
        request: Request,
        user: UserParam = None,
        address: AddressParam = None,
        kind: KindParam = None,
        since: AuditSinceParam = None,
        until: AuditUntilParam = None,
        cursor: CursorParam = None,
        limit: LimitParam = DEFAULT_LIMIT,
    ) -> Response:
        """Audit events, newest first, with filters and keyset paging."""
        page, filters = await query(user, address, kind, since, until, cursor, limit)
        keep: Mapping[str, object | None] = {
            **filters,
            "limit": limit if limit != DEFAULT_LIMIT else None,
        }
        return renderer.page(
            request,
            "audit.html",
            {
                "active": "audit",
                "title": "Audit",
                "page": page,
                "filters": filters,
                "kinds": AUDIT_KINDS,
                "first_url": url_with("/audit", keep) if cursor else None,
                "next_url": url_with("/audit", {**keep, "cursor": page.next_cursor})
                if page.next_cursor
                else None,
                "csv_url": url_with("/audit.csv", filters),
                "filter_url": lambda **extra: url_with("/audit", {**filters, **extra}),
            },
        )

    @pages.get("/audit.csv")
    async def audit_csv(
        user: UserParam = None,
        address: AddressParam = None,
        kind: KindParam = None,
        since: AuditSinceParam = None,
        until: AuditUntilParam = None,
    ) -> Response:
        """Every event matching the filters as CSV, streamed in batches, newest first."""
        # The first batch is read before answering, so a bad filter or a down database still
        # gets a proper error status instead of a truncated download.
        first, _ = await query(user, address, kind, since, until, None, CSV_BATCH)

        async def lines() -> AsyncIterator[str]:
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\r\n")
            writer.writerow(CSV_COLUMNS)
            page = first
            while True:
                writer.writerows(csv_row(event) for event in page.items)
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
                if page.next_cursor is None:
                    return
                page, _ = await query(
                    user, address, kind, since, until, page.next_cursor, CSV_BATCH
                )

        return StreamingResponse(
            lines(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="kmsgate-audit.csv"'},
        )

    @api.get("/audit", response_model=AuditPage, summary="List audit events")
    async def api_audit(
        user: UserParam = None,
        address: AddressParam = None,
        kind: KindParam = None,
        since: AuditSinceParam = None,
        until: AuditUntilParam = None,
        cursor: CursorParam = None,
        limit: LimitParam = DEFAULT_LIMIT,
    ) -> AuditPage:
        """Gateway audit events, newest first; the filters must stay the same across pages."""
        page, _ = await query(user, address, kind, since, until, cursor, limit)
        return AuditPage(
            items=[AuditEventModel.from_event(e) for e in page.items],
            next_cursor=page.next_cursor,
        )

    router = APIRouter()
    router.include_router(pages)
    router.include_router(api)
    return router
