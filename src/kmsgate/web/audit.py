"""The gateway's audit trail for administrators: /audit, /audit.csv and /api/audit."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from kmsgate.access.audit_csv import CSV_COLUMNS, csv_row
from kmsgate.store.audit import AUDIT_KINDS, AuditEvent
from kmsgate.store.gateway import GatewayStore
from kmsgate.store.records import Page
from kmsgate.web.context import Web
from kmsgate.web.errors import ErrorModel
from kmsgate.web.filters import DEFAULT_LIMIT, AuditFilters, AuditQuery, time_range
from kmsgate.web.render import UtcTime, url_with

CSV_BATCH = 1000


class AuditEventModel(BaseModel):
    """One audit event: a login, a window or an activation, linked by user, address and CMID."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    id: int
    time: UtcTime
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

    @field_validator("id", mode="before")
    @classmethod
    def _stored_id(cls, value: int | None) -> int:
        # Events not yet written have no id; none of those is ever listed.
        return value or 0

    @classmethod
    def from_event(cls, event: AuditEvent) -> AuditEventModel:
        """Build from a store event."""
        return cls.model_validate(event)


class AuditPage(BaseModel):
    """A page of audit events, newest first; pass next_cursor back as `cursor` for more."""

    model_config = ConfigDict(from_attributes=True)

    items: list[AuditEventModel]
    next_cursor: str | None


def _form_time(value: datetime | None) -> str | None:
    # Full precision: paging cursors are bound to the exact filter values.
    return None if value is None else value.replace(tzinfo=None).isoformat()


async def _query(
    store: GatewayStore, filters: AuditFilters, cursor: str | None, limit: int
) -> tuple[Page[AuditEvent], dict[str, object | None]]:
    """A page of events and the filters as the page's links repeat them."""
    start, end = time_range(filters.since, filters.until)
    username = (filters.user or "").strip() or None
    ip = (filters.address or "").strip() or None
    page = await store.list_audit(
        username=username,
        address=ip,
        kind=filters.kind,
        since=start,
        until=end,
        cursor=cursor,
        limit=limit,
    )
    shown: dict[str, object | None] = {
        "user": username,
        "address": ip,
        "kind": filters.kind,
        "since": _form_time(start),
        "until": _form_time(end),
    }
    return page, shown


pages = APIRouter(include_in_schema=False)
api = APIRouter(
    prefix="/api",
    tags=["audit"],
    responses={
        400: {"model": ErrorModel, "description": "Bad paging cursor or parameter"},
        401: {"model": ErrorModel, "description": "Not logged in as an administrator"},
        503: {"model": ErrorModel, "description": "Database unavailable"},
    },
)


@pages.get("/audit", response_class=HTMLResponse)
async def audit_page(request: Request, web: Web, query: Annotated[AuditQuery, Query()]) -> Response:
    """Audit events, newest first, with filters and keyset paging."""
    page, filters = await _query(web.audit_store, query, query.cursor, query.limit)
    keep = {**filters, "limit": query.limit if query.limit != DEFAULT_LIMIT else None}
    return web.renderer.page(
        request,
        "audit.html",
        {
            "active": "audit",
            "title": "Audit",
            "page": page,
            "filters": filters,
            "kinds": AUDIT_KINDS,
            "first_url": url_with("/audit", keep) if query.cursor else None,
            "next_url": url_with("/audit", {**keep, "cursor": page.next_cursor})
            if page.next_cursor
            else None,
            "csv_url": url_with("/audit.csv", filters),
            "filter_url": lambda **extra: url_with("/audit", {**filters, **extra}),
        },
    )


@pages.get("/audit.csv")
async def audit_csv(web: Web, filters: Annotated[AuditFilters, Query()]) -> Response:
    """Every event matching the filters as CSV, streamed in batches, newest first."""
    store = web.audit_store
    # The first batch is read before answering, so a bad filter or a down database still
    # gets a proper error status instead of a truncated download.
    first, _ = await _query(store, filters, None, CSV_BATCH)

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
            page, _ = await _query(store, filters, page.next_cursor, CSV_BATCH)

    return StreamingResponse(
        lines(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="kmsgate-audit.csv"'},
    )


@api.get("/audit", response_model=AuditPage, summary="List audit events")
async def api_audit(web: Web, query: Annotated[AuditQuery, Query()]) -> AuditPage:
    """Gateway audit events, newest first; the filters must stay the same across pages."""
    page, _ = await _query(web.audit_store, query, query.cursor, query.limit)
    return AuditPage.model_validate(page)
