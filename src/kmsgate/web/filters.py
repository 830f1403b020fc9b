"""Query parameters of the listings: one pydantic model per listing's filters.

The HTML page, the JSON route and the CSV export of a listing take the same model, so they
accept exactly the same input (`Annotated[Model, Query()]` spreads its fields as parameters).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal, get_args

from fastapi import HTTPException, Path
from pydantic import BaseModel, Field

from kmsgate.store.audit import AUDIT_KINDS
from kmsgate.store.reports import MAX_STALE_DAYS, MAX_STALE_LIMIT

SortKey = Literal["last_seen", "first_seen", "machine_name", "sku_name", "request_count"]
Order = Literal["asc", "desc"]
Result = Literal["activated", "refused"]
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
    "logout",
    "user_added",
    "user_removed",
    "password_changed",
    "quota_changed",
]
assert set(get_args(AuditKind)) == set(AUDIT_KINDS), "AuditKind is out of step with the store"

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_SEARCH = 200
MAX_CURSOR = 2048  # the store's own cap on cursor length
MAX_NODE = 100
DEFAULT_STALE_DAYS = 30
PAGE_STALE = 50
# Control characters never occur in what we search for, and PostgreSQL rejects NUL outright.
NO_CONTROL_CHARS = r"^[^\x00-\x1f\x7f]*$"
PRINTABLE_ASCII = r"^[!-~]*$"

Search = Annotated[
    str | None,
    Field(
        max_length=MAX_SEARCH,
        pattern=NO_CONTROL_CHARS,
        description="Machine name or SKU name substring, exact CMID, or address prefix.",
    ),
]
Cursor = Annotated[
    str | None,
    Field(
        max_length=MAX_CURSOR,
        pattern=PRINTABLE_ASCII,
        description="Opaque cursor from a previous page's next_cursor or prev_cursor.",
    ),
]
Limit = Annotated[int, Field(ge=1, le=MAX_LIMIT, description="Items per page.")]
CmidParam = Annotated[
    uuid.UUID,
    Path(description="Client machine id (CMID), a GUID.", examples=[str(uuid.UUID(int=1))]),
]


def query_time(value: datetime | None, name: str) -> datetime | None:
    """A query timestamp in UTC; naive means UTC. 400 when it cannot be expressed in UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        # e.g. 0001-01-01T00:00+01:00 lies before datetime.min once shifted to UTC.
        raise HTTPException(400, f"{name} is out of range") from None


def time_range(
    since: datetime | None, until: datetime | None
) -> tuple[datetime | None, datetime | None]:
    """Validated (since, until) in UTC; 400 when since is after until."""
    start, end = query_time(since, "since"), query_time(until, "until")
    if start is not None and end is not None and start > end:
        raise HTTPException(400, "since must not be later than until")
    return start, end


class Paging(BaseModel):
    """Keyset paging: a cursor from a previous page and the page size."""

    cursor: Cursor = None
    limit: Limit = DEFAULT_LIMIT


class SearchQuery(BaseModel):
    """A search of the client list or the product catalogue."""

    search: Search = None

    @property
    def text(self) -> str | None:
        """The search text without surrounding blanks; None when nothing is left."""
        return (self.search or "").strip() or None


class ClientQuery(SearchQuery):
    """The client list (/clients, /api/clients): search, sort and order stay across pages."""

    sort: SortKey = Field("last_seen", description="Column to sort by.")
    order: Order = Field("desc", description="Sort direction.")
    cursor: Cursor = None
    limit: Limit = DEFAULT_LIMIT


class ActivationQuery(BaseModel):
    """The request list (/activations, /api/activations)."""

    since: datetime | None = Field(
        None, description="Only requests at or after this time (ISO 8601; UTC if no offset)."
    )
    until: datetime | None = Field(
        None, description="Only requests before this time (ISO 8601; UTC if no offset)."
    )
    result: Result | None = Field(None, description="Only served or only refused requests.")
    node: str | None = Field(
        None,
        max_length=MAX_NODE,
        pattern=NO_CONTROL_CHARS,
        description="Only requests answered by this node.",
    )
    cursor: Cursor = None
    limit: Limit = DEFAULT_LIMIT

    def time_range(self) -> tuple[datetime | None, datetime | None]:
        """since and until in UTC; 400 when since is after until."""
        return time_range(self.since, self.until)


class AuditFilters(BaseModel):
    """The audit trail's filters (/audit, /audit.csv, /api/audit)."""

    user: str | None = Field(
        None, max_length=256, pattern=NO_CONTROL_CHARS, description="Only events of this user name."
    )
    address: str | None = Field(
        None,
        max_length=100,
        pattern=NO_CONTROL_CHARS,
        description="Only events of this IP address.",
    )
    kind: AuditKind | None = Field(None, description="Only events of this kind.")
    since: datetime | None = Field(
        None, description="Only events at or after this time (ISO 8601; UTC if no offset)."
    )
    until: datetime | None = Field(
        None, description="Only events before this time (ISO 8601; UTC if no offset)."
    )


class AuditQuery(AuditFilters):
    """The audit trail's filters with paging (the HTML list and the JSON API)."""

    cursor: Cursor = None
    limit: Limit = DEFAULT_LIMIT


class MonthQuery(BaseModel):
    """The month of a licence report (page, CSV and JSON)."""

    month: str | None = Field(
        None,
        max_length=7,
        pattern=PRINTABLE_ASCII,
        description="Calendar month in UTC, YYYY-MM (default: the current month).",
        examples=["2026-11"],
    )


class StaleQuery(BaseModel):
    """Which machines count as stale (page, CSV and JSON)."""

    days: int = Field(
        DEFAULT_STALE_DAYS,
        ge=1,
        le=MAX_STALE_DAYS,
        description="Machines not seen for this many days.",
    )


class StalePaging(StaleQuery):
    """The stale-machine report, one page at a time (JSON)."""

    cursor: Cursor = None
    limit: int = Field(PAGE_STALE, ge=1, le=MAX_STALE_LIMIT, description="Machines per page.")


class ReportsQuery(StaleQuery, MonthQuery):
    """The /reports page: a month and one page of stale machines."""

    cursor: Cursor = None
