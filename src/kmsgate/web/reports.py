"""Licence reports for administrators: /reports, its CSV exports and /api/reports/...

The JSON models and CSV rows here are the reports' one external form: `kmsgate report`
prints the same documents.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import AliasPath, BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from kmsgate.access.audit_csv import csv_cell
from kmsgate.store.reports import (
    MAX_STALE_LIMIT,
    Month,
    MonthlyReport,
    StaleMachine,
    StaleReport,
)
from kmsgate.web.charts import product_bars
from kmsgate.web.context import Web
from kmsgate.web.errors import ErrorModel
from kmsgate.web.filters import (
    DEFAULT_STALE_DAYS,
    PAGE_STALE,
    MonthQuery,
    ReportsQuery,
    StalePaging,
    StaleQuery,
)
from kmsgate.web.render import UtcTime, url_with

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


class ProductMachinesModel(BaseModel):
    """Distinct machines served for one product (SKU) in the month."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    sku_id: uuid.UUID | None
    product: str
    machines: int


class UserMachinesModel(BaseModel):
    """Distinct machines one gateway user activated for one product in the month."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    username: str
    product: str
    machines: int


class UserTotalModel(BaseModel):
    """Distinct machines one gateway user activated in the month, all products."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    username: str
    machines: int


class MonthlyReportModel(BaseModel):
    """A month's true-up figures: served requests only, each machine counted once per row."""

    model_config = ConfigDict(from_attributes=True)

    month: str
    start: datetime = Field(validation_alias=AliasPath("month", "start"))
    end: datetime = Field(validation_alias=AliasPath("month", "end"))
    machines: int
    products: list[ProductMachinesModel]
    users: list[UserMachinesModel]
    user_totals: list[UserTotalModel]

    @field_validator("month", mode="before")
    @classmethod
    def _month_text(cls, month: Month | str) -> str:
        return str(month)

    @classmethod
    def from_report(cls, report: MonthlyReport) -> MonthlyReportModel:
        """Build from the store's report."""
        return cls.model_validate(report)


class StaleMachineModel(BaseModel):
    """A machine not seen since the cutoff; last_result says whether it was still served."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    cmid: uuid.UUID
    machine_name: str
    product: str
    first_seen: UtcTime
    last_seen: UtcTime
    last_address: str
    last_result: str
    request_count: int


class StaleReportModel(BaseModel):
    """Machines with no request for `days` days, most recently seen first."""

    model_config = ConfigDict(from_attributes=True)

    days: int
    cutoff: UtcTime
    total: int
    machines: list[StaleMachineModel]
    next_cursor: str | None

    @classmethod
    def from_report(cls, report: StaleReport) -> StaleReportModel:
        """Build from one page of the store's report."""
        return cls.model_validate(report)


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


pages = APIRouter(include_in_schema=False)
api = APIRouter(
    prefix="/api/reports",
    tags=["reports"],
    responses={
        400: {"model": ErrorModel, "description": "Bad month, paging cursor or parameter"},
        401: {"model": ErrorModel, "description": "Not logged in as an administrator"},
        503: {"model": ErrorModel, "description": "Database unavailable"},
    },
)


@api.get("/monthly", response_model=MonthlyReportModel, summary="Machines per month")
async def api_monthly(web: Web, query: Annotated[MonthQuery, Query()]) -> MonthlyReportModel:
    """Distinct machines served per product in a UTC month, and per gateway user."""
    report = await web.reports.monthly(parse_month(query.month, web.now()))
    return MonthlyReportModel.model_validate(report)


@api.get("/stale", response_model=StaleReportModel, summary="Machines that stopped renewing")
async def api_stale(web: Web, query: Annotated[StalePaging, Query()]) -> StaleReportModel:
    """Machines with no request for `days` days; pass next_cursor back as `cursor`."""
    page = await web.reports.stale(
        days=query.days, now=web.now(), cursor=query.cursor, limit=query.limit
    )
    return StaleReportModel.model_validate(page)


@pages.get("/reports", response_class=HTMLResponse)
async def reports_page(
    request: Request, web: Web, query: Annotated[ReportsQuery, Query()]
) -> Response:
    """The month's machines per product (chart and table), per user, and stale machines."""
    now = web.now()
    chosen = parse_month(query.month, now)
    report = await web.reports.monthly(chosen)
    days = query.days
    stale = await web.reports.stale(days=days, now=now, cursor=query.cursor, limit=PAGE_STALE)
    keep = {"month": str(chosen), "days": days if days != DEFAULT_STALE_DAYS else None}
    return web.renderer.page(
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
            if chosen < Month.containing(now)
            else None,
            "days": days,
            "stale": stale,
            "first_stale_url": url_with("/reports", keep) if query.cursor else None,
            "next_stale_url": url_with("/reports", {**keep, "cursor": stale.next_cursor})
            if stale.next_cursor
            else None,
            "monthly_csv_url": url_with("/reports/monthly.csv", {"month": chosen}),
            "users_csv_url": url_with("/reports/users.csv", {"month": chosen}),
            "monthly_json_url": url_with("/api/reports/monthly", {"month": chosen}),
            "stale_csv_url": url_with("/reports/stale.csv", {"days": days}),
        },
    )


def _download(text: str, name: str) -> Response:
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@pages.get("/reports/monthly.csv")
async def monthly_csv(web: Web, query: Annotated[MonthQuery, Query()]) -> Response:
    """Machines per product of the month as CSV."""
    report = await web.reports.monthly(parse_month(query.month, web.now()))
    text = csv_text(MONTHLY_CSV_COLUMNS, monthly_csv_rows(report))
    return _download(text, f"kmsgate-machines-{report.month}.csv")


@pages.get("/reports/users.csv")
async def users_csv(web: Web, query: Annotated[MonthQuery, Query()]) -> Response:
    """Machines per gateway user and product of the month as CSV."""
    report = await web.reports.monthly(parse_month(query.month, web.now()))
    text = csv_text(USERS_CSV_COLUMNS, users_csv_rows(report))
    return _download(text, f"kmsgate-users-{report.month}.csv")


@pages.get("/reports/stale.csv")
async def stale_csv(web: Web, query: Annotated[StaleQuery, Query()]) -> Response:
    """Every machine not seen for `days` days as CSV, streamed in batches."""
    at, days, reports = web.now(), query.days, web.reports
    # Read the first batch before answering: a failing database gets a real status.
    first = await reports.stale(days=days, now=at, limit=CSV_BATCH)

    async def lines() -> AsyncIterator[str]:
        page = first
        yield csv_text(STALE_CSV_COLUMNS, (stale_csv_row(m) for m in page.machines))
        while page.next_cursor is not None:
            page = await reports.stale(days=days, now=at, cursor=page.next_cursor, limit=CSV_BATCH)
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
