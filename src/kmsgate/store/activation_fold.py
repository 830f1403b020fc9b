"""Folding a batch of activation records into the rows and counter increments it writes.

Pure: no connection. Times and UUIDs are converted to the target driver's values here, once
per record, so the writers in activation_batch.py send the rows as they are.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kmsgate.store.records import ActivationRecord

ONE_HOUR = timedelta(hours=1)

# The column order of the rows fold() builds (and the writers' statements name).
ACTIVATION_COLUMNS = (
    "time",
    "cmid",
    "machine_name",
    "address",
    "sku_id",
    "sku_name",
    "license_status",
    "protocol",
    "result",
    "hresult",
    "node",
)
CLIENT_COLUMNS = (
    "cmid",
    "machine_name",
    "application_id",
    "sku_id",
    "sku_name",
    "kms_id",
    "license_status",
    "first_seen",
    "last_seen",
    "request_count",
    "last_epid",
    "last_address",
    "last_protocol",
)


def aware(value: datetime, what: str) -> datetime:
    """`value` in UTC; ValueError for a naive datetime."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(UTC)


def hour_of(value: datetime) -> datetime:
    """The UTC hour a time falls in."""
    return value.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


# ---------------------------------------------------------------- driver values


def _sqlite_time(value: datetime) -> str:
    # SQLAlchemy's SQLite DATETIME storage format (naive UTC, always with microseconds),
    # which UtcDateTime reads back and which sorts as text.
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


def _sqlite_uuid(value: uuid.UUID) -> str:
    return value.hex  # SQLAlchemy's Uuid on SQLite: 32 hex digits, no dashes


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True, slots=True)
class DriverValues:
    """How one driver takes times (already UTC) and UUIDs: converted once, while folding."""

    of_time: Callable[[datetime], Any]
    of_uuid: Callable[[uuid.UUID], Any]

    def of_optional_uuid(self, value: uuid.UUID | None) -> Any:
        return None if value is None else self.of_uuid(value)


NATIVE_VALUES = DriverValues(of_time=_same, of_uuid=_same)  # asyncpg encodes both itself
SQLITE_VALUES = DriverValues(of_time=_sqlite_time, of_uuid=_sqlite_uuid)


# ---------------------------------------------------------------- folding (pure)


@dataclass(slots=True)
class ClientFold:
    """All of one batch's records for one CMID, folded into a single client row."""

    first: Any  # driver time values: they compare like the times themselves
    latest: ActivationRecord
    latest_time: Any
    count: int

    def values(self, cmid: Any, driver: DriverValues) -> tuple[Any, ...]:
        """The client row in CLIENT_COLUMNS order, as driver values."""
        rec = self.latest
        return (
            cmid,
            rec.machine_name,
            driver.of_optional_uuid(rec.application_id),
            driver.of_optional_uuid(rec.sku_id),
            rec.sku_name,
            driver.of_optional_uuid(rec.kms_id),
            rec.license_status,
            self.first,
            self.latest_time,
            self.count,
            rec.epid,
            rec.address,
            rec.protocol,
        )


@dataclass(slots=True)
class FoldedBatch:
    """A batch reduced to the rows and counter increments one transaction writes."""

    driver: DriverValues
    activation_rows: list[tuple[Any, ...]] = field(default_factory=list)
    clients: dict[Any, ClientFold] = field(default_factory=dict)  # by driver CMID value
    counters: dict[str, int] = field(default_factory=dict)
    hours: dict[tuple[datetime, str], int] = field(default_factory=dict)
    products: dict[tuple[str, str], int] = field(default_factory=dict)

    def client_rows(self) -> list[tuple[Any, ...]]:
        """Client rows in CMID order (hex text and uuid sort alike): nodes lock in one order."""
        return [fold.values(cmid, self.driver) for cmid, fold in sorted(self.clients.items())]


def fold(records: Sequence[ActivationRecord], driver: DriverValues = NATIVE_VALUES) -> FoldedBatch:
    """Activation rows, one fold per CMID, and the counters' increments of a batch."""
    batch = FoldedBatch(driver)
    rows, folds, hours, products = batch.activation_rows, batch.clients, batch.hours, batch.products
    results: dict[str, int] = {}
    protocols: dict[int, int] = {}
    hour = hour_end = datetime.min.replace(tzinfo=UTC)
    as_time, as_uuid, optional_uuid = driver.of_time, driver.of_uuid, driver.of_optional_uuid
    for rec in records:
        when = rec.time
        if when.tzinfo is not UTC:
            when = aware(when, "ActivationRecord.time")
        stamp = as_time(when)
        cmid = rec.client_machine_id
        key = None if cmid is None else as_uuid(cmid)
        rows.append(
            (
                stamp,
                key,
                rec.machine_name,
                rec.address,
                optional_uuid(rec.sku_id),
                rec.sku_name,
                rec.license_status,
                rec.protocol,
                rec.result,
                rec.hresult,
                rec.node,
            )
        )
        if key is not None:
            seen = folds.get(key)
            if seen is None:
                folds[key] = ClientFold(stamp, rec, stamp, 1)
            else:
                seen.count += 1
                seen.first = min(seen.first, stamp)
                if stamp >= seen.latest_time:  # equal times: the later record wins
                    seen.latest, seen.latest_time = rec, stamp
        if not hour <= when < hour_end:  # records arrive in time order: rarely true
            hour = hour_of(when)
            hour_end = hour + ONE_HOUR
        hour_key = (hour, rec.node)
        hours[hour_key] = hours.get(hour_key, 0) + 1
        product_key = (rec.product_family, rec.sku_name)
        products[product_key] = products.get(product_key, 0) + 1
        results[rec.result] = results.get(rec.result, 0) + 1
        if rec.protocol is not None:
            protocols[rec.protocol] = protocols.get(rec.protocol, 0) + 1
    batch.counters["activations"] = len(records)
    batch.counters.update((f"result:{r}", n) for r, n in results.items())
    batch.counters.update((f"protocol:{p}", n) for p, n in protocols.items())
    return batch
