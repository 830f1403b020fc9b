"""Licence reports for administrators: /reports, its CSV exports and /api/reports/...

The JSON models and CSV rows here are the reports' one external form: `kmsgate report`
prints the same documents.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Security
from fastapi.responses import HTMLResponse, StreamingResponse
from fastapi.security import APIKeyCookie
from pydantic import BaseModel, ConfigDict
from starlette.responses import Response

from kmsgate.access.audit_csv import csv_cell
from kmsgate.catalog import Catalog
from kmsgate.store.database import Store
from kmsgate.store.reports import (
    MAX_STALE_DAYS,
    MAX_STALE_LIMIT,
    Month,
    MonthlyReport,
    ReportStore,
    StaleMachine,
    StaleReport,
)
from kmsgate.web.api import PRINTABLE_ASCII, CursorParam, ErrorModel
from kmsgate.web.auth import Admin, Authenticator
from kmsgate.web.pages import LoginRequired, Renderer, product_bars, url_with

DEFAULT_STALE_DAYS = 30
PAGE_STALE = 50
CSV_BATCH = MAX_STALE_LIMIT
MONTHLY_CSV_COLUMNS = ("month", "product", "sku_id", "machines")
USERS_CSV_COLUMNS = ("month", "username", "product", "machines")
STALE_CSV_COLUMNS = (
    "cmid",
    "machine_name",
    "product",
    "first_seen",
    "last_seen",
    "last_address",
    "last_result",
    "request_count",
)

MonthParam = Annotated[
    str | None,
    Query(
        max_length=7,
        pattern=PRINTABLE_ASCII,
        description="Calendar month in UTC, YYYY-MM (default: the current month).",
        examples=["2026-11"],
    ),
]
DaysParam = Annotated[
    int,
    Query(ge=1, le=MAX_STALE_DAYS, description="Machines not seen for this many days."),
]
StaleLimitParam = Annotated[int, Query(ge=1, le=MAX_STALE_LIMIT, description="Machines per page.")]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ProductMachinesModel(BaseModel):
    """Distinct machines served for one product (SKU) in the month."""

    model_config = ConfigDict(frozen=True)

    sku_id: uuid.UUID | None
    product: str
    machines: int


class UserMachinesModel(BaseModel):
    """Distinct machines one gateway user activated for one product in the month."""

    model_config = ConfigDict(frozen=True)

    username: str
    product: str
    machines: int


class UserTotalModel(BaseModel):
    """Distinct machines one gateway user activated in the month, all products."""

    model_config = ConfigDict(frozen=True)

    username: str
    machines: int


class MonthlyReportModel(BaseModel):
    """A month's true-up figures: served requests only, each machine counted once per row."""

    month: str
    start: datetime
    end: datetime
    machines: int
    products: list[ProductMachinesModel]
    users: list[UserMachinesModel]
    user_totals: list[UserTotalModel]

    @classmethod
    def from_report(cls, report: MonthlyReport) -> MonthlyReportModel:
        """Build from the store's report."""
        return cls(
            month=str(report.month),
            start=report.month.start,
            end=report.month.end,
            machines=report.machines,
            products=[
                ProductMachinesModel(sku_id=p.sku_id, product=p.product, machines=p.machines)
                for p in report.products
            ],
            users=[
                UserMachinesModel(username=u.username, product=u.product, machines=u.machines)
                for u in report.users
            ],
            user_totals=[
                UserTotalModel(username=t.username, machines=t.machines) for t in report.user_totals
            ],
        )


class StaleMachineModel(BaseModel):
    """A machine not seen since the cutoff; last_result says whether it was still served."""

    model_config = ConfigDict(frozen=True)

    cmid: uuid.UUID
    machine_name: str
    product: str
    first_seen: datetime
    last_seen: datetime
    last_address: str
    last_result: str
    request_count: int

    @classmethod
    def from_machine(cls, machine: StaleMachine) -> StaleMachineModel:
        """Build from the store's row."""
        return cls(
            cmid=machine.cmid,
            machine_name=machine.machine_name,
            product=machine.product,
            first_seen=_utc(machine.first_seen),
            last_seen=_utc(machine.last_seen),
            last_address=machine.last_address,
            last_result=machine.last_result,
            request_count=machine.request_count,
        )


class StaleReportModel(BaseModel):
    """Machines with no request for `days` days, most recently seen first."""

    days: int
    cutoff: datetime
    total: int
    machines: list[StaleMachineModel]
    next_cursor: str | None

    @classmethod
    def from_report(cls, report: StaleReport) -> StaleReportModel:
        """Build from one page of the store's report."""
        return cls(
            days=report.days,
            cutoff=_utc(report.cutoff),
            total=report.total,
            machines=[StaleMachineModel.from_machine(m) for m in report.machines],
            next_cursor=report.next_cursor,
        )


def monthly_csv_rows(report: MonthlyReport) -> list[list[str]]:
    """MONTHLY_CSV_COLUMNS rows, one per product."""
    month = str(report.month)
    return [
        [month, csv_cell(p.product), csv_cell(p.sku_id), str(p.machines)] for p in report.products
    ]


def users_csv_rows(report: MonthlyReport) -> list[list[str]]:
    """USERS_CSV_COLUMNS rows, one per gateway user and product."""
    month = str(report.month)
    return [
        [month, csv_cell(u.username), csv_cell(u.product), str(u.machines)] for u in report.users
    ]


def stale_csv_row(machine: StaleMachine) -> list[str]:
    """One STALE_CSV_COLUMNS row."""
    return [
        csv_cell(machine.cmid),
        csv_cell(machine.machine_name),
        csv_cell(machine.product),
        csv_cell(machine.first_seen),
        csv_cell(machine.last_seen),
        csv_cell(machine.last_address),
        machine.last_result,
        str(machine.request_count),
    ]


def csv_text(columns: Iterable[str], rows: Iterable[list[str]]) -> str:
    """A whole CSV document (CRLF line ends, as spreadsheets expect)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


def parse_month(text: str | None, now: datetime) -> Month:
    """The requested month, or the current one; 400 with the expected form when malformed."""
    if text is None or not text.strip():
        return Month.containing(now)
    try:
        return Month.parse(text)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None


def build_reports_router(
    store: Store,
    catalog: Catalog,
    authenticator: Authenticator,
    renderer: Renderer,
    *,
    now: Callable[[], datetime],
) -> APIRouter:
    """The admin-only report routes: the /reports page, its CSV exports and the JSON API."""
    reports = ReportStore(store, catalog)
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
        prefix="/api/reports",
        tags=["reports"],
        dependencies=[Security(session_cookie), Depends(admin_api)],
        responses={
            400: {"model": ErrorModel, "description": "Bad month, paging cursor or parameter"},
            401: {"model": ErrorModel, "description": "Not logged in as an administrator"},
            503: {"model": ErrorModel, "description": "Database unavailable"},
        },
    )

    @api.get("/monthly", response_model=MonthlyReportModel, summary="Machines per month")
    async def api_monthly(month: MonthParam = None) -> MonthlyReportModel:
        """Distinct machines served per product in a UTC month, and per gateway user."""
        return MonthlyReportModel.from_report(await reports.monthly(parse_month(month, now())))

    @api.get("/stale", response_model=StaleReportModel, summary="Machines that stopped renewing")
    async def api_stale(
        days: DaysParam = DEFAULT_STALE_DAYS,
        cursor: CursorParam = None,
        limit: StaleLimitParam = PAGE_STALE,
    ) -> StaleReportModel:
        """Machines with no request for `days` days; pass next_cursor back as `cursor`."""
        page = await reports.stale(days=days, now=now(), cursor=cursor, limit=limit)
        return StaleReportModel.from_report(page)

    @pages.get("/reports", response_class=HTMLResponse)
    async def reports_page(
        request: Request,
        month: MonthParam = None,
        days: DaysParam = DEFAULT_STALE_DAYS,
        cursor: CursorParam = None,
    ) -> Response:
        """The month's machines per product (chart and table), per user, and stale machines."""
        chosen = parse_month(month, now())
        report = await reports.monthly(chosen)
        stale = await reports.stale(days=days, now=now(), cursor=cursor, limit=PAGE_STALE)
        current = Month.containing(now())
        keep = {
            "month": str(chosen),
            "days": days if days != DEFAULT_STALE_DAYS else None,
        }
        return renderer.page(
            request,
            "reports.html",
            {
                "active": "reports",
                "title": "Reports",
                "month": str(chosen),
                "report": report,
                "bars": product_bars([(p.product, p.machines) for p in report.products]),
                "prev_month_url": url_with("/reports", {**keep, "month": chosen.previous()}),
                "next_month_url": url_with("/reports", {**keep, "month": chosen.next()})
                if chosen < current
                else None,
                "days": days,
                "stale": stale,
                "first_stale_url": url_with("/reports", keep) if cursor else None,
                "next_stale_url": url_with("/reports", {**keep, "cursor": stale.next_cursor})
                if stale.next_cursor
                else None,
                "monthly_csv_url": url_with("/reports/monthly.csv", {"month": chosen}),
                "users_csv_url": url_with("/reports/users.csv", {"month": chosen}),
                "monthly_json_url": url_with("/api/reports/monthly", {"month": chosen}),
                "stale_csv_url": url_with("/reports/stale.csv", {"days": days}),
            },
        )

    def download(text: str, name: str) -> Response:
        return Response(
            text,
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @pages.get("/reports/monthly.csv")
    async def monthly_csv(month: MonthParam = None) -> Response:
        """Machines per product of the month as CSV."""
        report = await reports.monthly(parse_month(month, now()))
        text = csv_text(MONTHLY_CSV_COLUMNS, monthly_csv_rows(report))
        return download(text, f"kmsgate-machines-{report.month}.csv")

    @pages.get("/reports/users.csv")
    async def users_csv(month: MonthParam = None) -> Response:
        """Machines per gateway user and product of the month as CSV."""
        report = await reports.monthly(parse_month(month, now()))
        text = csv_text(USERS_CSV_COLUMNS, users_csv_rows(report))
        return download(text, f"kmsgate-users-{report.month}.csv")

    @pages.get("/reports/stale.csv")
    async def stale_csv(days: DaysParam = DEFAULT_STALE_DAYS) -> Response:
        """Every machine not seen for `days` days as CSV, streamed in batches."""
        at = now()
        # Read the first batch before answering: a failing database gets a real status.
        first = await reports.stale(days=days, now=at, limit=CSV_BATCH)

        async def lines() -> AsyncIterator[str]:
            page = first
            yield csv_text(STALE_CSV_COLUMNS, (stale_csv_row(m) for m in page.machines))
            while page.next_cursor is not None:
                page = await reports.stale(
                    days=days, now=at, cursor=page.next_cursor, limit=CSV_BATCH
                )
                buffer = io.StringIO()
                csv.writer(buffer, lineterminator="\r\n").writerows(
                    stale_csv_row(m) for m in page.machines
                )
                yield buffer.getvalue()

        return StreamingResponse(
            lines(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="kmsgate-stale-{days}d.csv"'},
        )

    router = APIRouter()
    router.include_router(pages)
    router.include_router(api)
    return router
