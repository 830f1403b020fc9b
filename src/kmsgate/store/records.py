"""Plain value types the store takes and returns (no SQLAlchemy types leak out)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ActivationRecord:
    """One KMS request as the host saw it, served or refused."""

    time: datetime  # UTC, tz-aware
    client_machine_id: uuid.UUID | None  # None when the request did not decode
    machine_name: str
    address: str  # client IP without port
    application_id: uuid.UUID | None
    sku_id: uuid.UUID | None
    sku_name: str  # catalogue name or "unknown (<guid>)"
    kms_id: uuid.UUID | None
    product_family: str  # short label for charts: "Windows", "Office 2016", ...
    license_status: int | None
    protocol: int | None  # 4, 5 or 6
    result: str  # "activated" or "refused"
    hresult: int  # 0 on success
    epid: str | None
    node: str  # --node-name of the host that answered


@dataclass(frozen=True, slots=True)
class ClientRow:
    """One client machine (CMID) with its latest request."""

    cmid: uuid.UUID
    machine_name: str
    application_id: uuid.UUID | None
    sku_id: uuid.UUID | None
    sku_name: str
    kms_id: uuid.UUID | None
    license_status: int | None
    first_seen: datetime
    last_seen: datetime
    request_count: int
    last_epid: str | None
    last_address: str
    last_protocol: int | None


@dataclass(frozen=True, slots=True)
class ActivationRow:
    """One stored request."""

    id: int
    time: datetime
    cmid: uuid.UUID | None
    machine_name: str
    address: str
    sku_id: uuid.UUID | None
    sku_name: str
    license_status: int | None
    protocol: int | None
    result: str
    hresult: int
    node: str


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a keyset-paged listing; cursors are opaque strings."""

    items: list[T]
    next_cursor: str | None
    prev_cursor: str | None
    total: int | None  # exact when a counter gives it for free, else None


@dataclass(frozen=True, slots=True)
class Stats:
    """Dashboard figures, read from counters and pre-aggregated tables."""

    clients: int
    activations: int
    refusals: int
    per_hour: list[tuple[datetime, int]]  # last 7 days, hourly, oldest first, zero-filled
    per_product: list[tuple[str, int]]  # product family (or SKU name) -> requests, top 20
    per_protocol: dict[int, int]
    last_activation: datetime | None
    # Gateway connections refused without a window (before any KMS request), lifetime.
    refused_connections: int = 0


@dataclass(frozen=True, slots=True)
class User:
    """A dashboard (and later gateway) account."""

    name: str
    password_hash: str
    is_admin: bool
    created: datetime
    disabled: bool
