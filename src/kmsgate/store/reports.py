"""Licence reports: distinct machines per product and month, per gateway user, stale machines.

Every query reads one bounded key range: a month of `machine_months` (one row per machine,
SKU and month, kept by a trigger on activations: no renewal is read again), a month of
`audit_events` through ix_audit_events_time_id, and the clients not seen since a cutoff
through ix_clients_last_seen_cmid. docs/records.md has the measured times.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, literal, select, tuple_

from kmsgate.catalog import Catalog
from kmsgate.store import cursor as cursors
from kmsgate.store.database import Store
from kmsgate.store.errors import InvalidCursor
from kmsgate.store.schema import audit_events, clients, machine_months

MAX_STALE_DAYS = 36500
MAX_STALE_LIMIT = 1000
SERVED = "activated"
_MONTH = re.compile(r"(\d{4})-(\d{2})", re.ASCII)


@dataclass(frozen=True, slots=True, order=True)
class Month:
    """A calendar month in UTC, written `YYYY-MM`."""

    year: int
    month: int

    def __post_init__(self) -> None:
        if not 1 <= self.month <= 12 or not 1970 <= self.year <= 9998:
            raise ValueError(f"no month {self.year:04d}-{self.month:02d}")

    @classmethod
    def parse(cls, text: str) -> Month:
        """`2026-11` -> Month(2026, 11); ValueError naming the expected form."""
        match = _MONTH.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"month {text!r} is not written YYYY-MM (for example 2026-11)")
        return cls(int(match[1]), int(match[2]))

    @classmethod
    def containing(cls, when: datetime) -> Month:
        """The UTC month `when` falls in."""
        utc = when.astimezone(UTC)
        return cls(utc.year, utc.month)

    @property
    def start(self) -> datetime:
        """First instant of the month (UTC)."""
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        """First instant of the next month (UTC): the range is [start, end)."""
        return self.next().start

    def next(self) -> Month:
        """The following month."""
        return Month(self.year + 1, 1) if self.month == 12 else Month(self.year, self.month + 1)

    def previous(self) -> Month:
        """The month before."""
        return Month(self.year - 1, 12) if self.month == 1 else Month(self.year, self.month - 1)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


@dataclass(frozen=True, slots=True)
class ProductMachines:
    """Distinct machines served for one product (SKU) in a month."""

    sku_id: uuid.UUID | None
    product: str
    machines: int


@dataclass(frozen=True, slots=True)
class UserMachines:
    """Distinct machines one gateway user activated for one product in a month."""

    username: str
    product: str
    machines: int


@dataclass(frozen=True, slots=True)
class UserTotal:
    """Distinct machines one gateway user activated in a month, all products together."""

    username: str
    machines: int


@dataclass(frozen=True, slots=True)
class MonthlyReport:
    """A month's true-up figures: only served requests count, each machine once per row."""

    month: Month
    machines: int  # distinct machines over all products (one that changed SKU counts once)
    products: list[ProductMachines]  # most machines first
    users: list[UserMachines]  # gateway mode; by user, then most machines first
    user_totals: list[UserTotal]  # by user name


@dataclass(frozen=True, slots=True)
class StaleMachine:
    """A machine not seen since the cutoff, with its last request."""

    cmid: uuid.UUID
    machine_name: str
    product: str
    first_seen: datetime
    last_seen: datetime
    last_address: str
    last_result: str  # "activated" (it stopped renewing) or "refused" (it gave up)
    request_count: int


@dataclass(frozen=True, slots=True)
class StaleReport:
    """Machines whose last request is older than `days` days, most recently seen first."""

    days: int
    cutoff: datetime
    total: int
    machines: list[StaleMachine]
    next_cursor: str | None


def _stale_machine(row: Any) -> StaleMachine:
    m = row._mapping
    return StaleMachine(
        cmid=m["cmid"],
        machine_name=m["machine_name"],
        product=m["sku_name"],
        first_seen=m["first_seen"],
        last_seen=m["last_seen"],
        last_address=m["last_address"],
        # last_epid follows the newest request and is only set when it was served.
        last_result=SERVED if m["last_epid"] is not None else "refused",
        request_count=m["request_count"],
    )


def _time_key(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _stale_boundary(token: str, days: int) -> tuple[datetime, uuid.UUID]:
    cur = cursors.decode(
        token, listing="stale", order="last_seen:desc", scope=cursors.scope_of(days), key_len=2
    )
    if cur.direction != "next":
        raise InvalidCursor("stale machines only page forwards")
    when, cmid = cur.key
    try:
        parsed = datetime.fromisoformat(str(when))
        ident = uuid.UUID(str(cmid))
    except ValueError as exc:
        raise InvalidCursor("cursor key is malformed") from exc
    if parsed.tzinfo is None:
        raise InvalidCursor("cursor time has no offset")
    return parsed.astimezone(UTC), ident


class ReportStore:
    """Report queries over an open Store (same engine, both dialects).

    With a catalogue, products are named by their SKU's current catalogue name, so a SKU
    renamed mid-month by a catalogue update keeps one name; else by the name recorded last
    in alphabetical order.
    """

    def __init__(self, store: Store, catalog: Catalog | None = None) -> None:
        self._store = store
        self._catalog = catalog

    def _product_name(self, sku_id: uuid.UUID | None, recorded: str) -> str:
        sku = self._catalog.sku(sku_id) if self._catalog is not None and sku_id else None
        return sku.name if sku is not None else recorded

    async def monthly(self, month: Month) -> MonthlyReport:
        """Distinct machines per product and per gateway user, served in `month` (UTC)."""
        in_month = machine_months.c.month == str(month)
        per_product = (
            select(
                machine_months.c.sku_id,
                # A catalogue update may rename a SKU mid-month; one row per SKU id regardless.
                func.max(machine_months.c.sku_name).label("product"),
                func.count().label("machines"),
            )
            .where(in_month)
            .group_by(machine_months.c.sku_id)
        )
        overall = select(func.count(machine_months.c.cmid.distinct())).where(in_month)
        audited = and_(
            audit_events.c.time >= month.start,
            audit_events.c.time < month.end,
            audit_events.c.kind == "activation",
            audit_events.c.result == SERVED,
            audit_events.c.username.is_not(None),
            audit_events.c.cmid.is_not(None),
        )
        per_user = (
            select(
                audit_events.c.username,
                func.coalesce(audit_events.c.product, literal("unknown")).label("product"),
                func.count(audit_events.c.cmid.distinct()).label("machines"),
            )
            .where(audited)
            .group_by(audit_events.c.username, audit_events.c.product)
        )
        user_totals = (
            select(audit_events.c.username, func.count(audit_events.c.cmid.distinct()))
            .where(audited)
            .group_by(audit_events.c.username)
        )
        async with self._store._read() as conn:
            product_rows = list(await conn.execute(per_product))
            machines = int((await conn.execute(overall)).scalar() or 0)
            user_rows = list(await conn.execute(per_user))
            total_rows = list(await conn.execute(user_totals))
        products = sorted(
            (
                ProductMachines(r.sku_id, self._product_name(r.sku_id, r.product), int(r.machines))
                for r in product_rows
            ),
            key=lambda p: (-p.machines, p.product, str(p.sku_id)),
        )
        users = sorted(
            (UserMachines(r.username, r.product, int(r.machines)) for r in user_rows),
            key=lambda u: (u.username, -u.machines, u.product),
        )
        totals = sorted(
            (UserTotal(name, int(n)) for name, n in total_rows), key=lambda t: t.username
        )
        return MonthlyReport(month, machines, products, users, totals)

    async def stale(
        self,
        *,
        days: int,
        now: datetime,
        cursor: str | None = None,
        limit: int = 100,
    ) -> StaleReport:
        """Machines with no request (served or refused) in the `days` days before `now`."""
        if not 1 <= days <= MAX_STALE_DAYS:
            raise ValueError(f"days must be 1..{MAX_STALE_DAYS}, got {days}")
        if not 1 <= limit <= MAX_STALE_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_STALE_LIMIT}, got {limit}")
        cutoff = now.astimezone(UTC) - timedelta(days=days)
        where: list[ColumnElement[bool]] = [clients.c.last_seen < cutoff]
        if cursor is not None:
            last_seen, cmid = _stale_boundary(cursor, days)
            bound = tuple_(
                literal(last_seen, type_=clients.c.last_seen.type),
                literal(cmid, type_=clients.c.cmid.type),
            )
            where.append(tuple_(clients.c.last_seen, clients.c.cmid) < bound)
        page = (
            select(clients)
            .where(*where)
            .order_by(clients.c.last_seen.desc(), clients.c.cmid.desc())
            .limit(limit + 1)
        )
        total_query = select(func.count()).select_from(clients).where(clients.c.last_seen < cutoff)
        async with self._store._read() as conn:
            rows = list(await conn.execute(page))
            total = int((await conn.execute(total_query)).scalar() or 0)
        machines = [_stale_machine(r) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = machines[-1]
            next_cursor = cursors.encode(
                cursors.Cursor(
                    "stale",
                    "last_seen:desc",
                    cursors.scope_of(days),
                    "next",
                    (_time_key(last.last_seen), str(last.cmid)),
                )
            )
        return StaleReport(days, cutoff, total, machines, next_cursor)
