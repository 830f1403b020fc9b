"""JSON API of the dashboard (`/api/...`): response models and routes.

The models read the store's row dataclasses (store/records.py) by attribute; `kmsgate ...
--json` prints the same models, so the CLI and the API answer alike.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from kmsgate.catalog import Catalog, Sku
from kmsgate.protocol.licensing import license_status_name
from kmsgate.store.records import ActivationRow, ClientRow, Page, Stats
from kmsgate.web.context import Web
from kmsgate.web.errors import ErrorModel
from kmsgate.web.filters import ActivationQuery, ClientQuery, CmidParam, Paging, SearchQuery


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; the store writes UTC, so say so on the way out.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


StoredTime = Annotated[datetime, AfterValidator(_utc)]


class _StatusNamed(BaseModel):
    """A row with a licence status code, shown with its readable name too."""

    @field_validator("license_status_name", mode="before", check_fields=False)
    @classmethod
    def _name_of_status(cls, status: int | None) -> str | None:
        return license_status_name(status)


class ClientModel(_StatusNamed):
    """A client machine and its latest request."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    cmid: uuid.UUID
    machine_name: str
    application_id: uuid.UUID | None
    sku_id: uuid.UUID | None
    sku_name: str
    kms_id: uuid.UUID | None
    license_status: int | None
    license_status_name: str | None = Field(validation_alias="license_status")
    first_seen: StoredTime
    last_seen: StoredTime
    request_count: int
    last_epid: str | None
    last_address: str
    last_protocol: int | None


class ActivationModel(_StatusNamed):
    """One stored KMS request, served or refused."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    id: int
    time: StoredTime
    cmid: uuid.UUID | None
    machine_name: str
    address: str
    sku_id: uuid.UUID | None
    sku_name: str
    license_status: int | None
    license_status_name: str | None = Field(validation_alias="license_status")
    protocol: int | None
    result: str
    hresult: int
    node: str


class ClientPage(BaseModel):
    """A page of clients; pass next_cursor/prev_cursor back as `cursor` to move."""

    model_config = ConfigDict(from_attributes=True)

    items: list[ClientModel]
    next_cursor: str | None
    prev_cursor: str | None
    total: int | None = Field(description="Exact count when the store has it cheaply, else null.")

    @classmethod
    def from_page(cls, page: Page[ClientRow]) -> ClientPage:
        """Build from a store page."""
        return cls.model_validate(page)


class ActivationPage(BaseModel):
    """A page of requests, newest first."""

    model_config = ConfigDict(from_attributes=True)

    items: list[ActivationModel]
    next_cursor: str | None
    prev_cursor: str | None
    total: int | None = Field(description="Exact count when the store has it cheaply, else null.")

    @classmethod
    def from_page(cls, page: Page[ActivationRow]) -> ActivationPage:
        """Build from a store page."""
        return cls.model_validate(page)


class ClientDetail(BaseModel):
    """A client with a page of its request history."""

    client: ClientModel
    history: ActivationPage


class HourCount(BaseModel):
    """Requests in the hour starting at `hour` (UTC)."""

    hour: StoredTime
    count: int


class ProductCount(BaseModel):
    """Requests for one product family."""

    product: str
    count: int


class ProtocolCount(BaseModel):
    """Requests per KMS protocol major version."""

    protocol: int
    count: int


class StatsModel(BaseModel):
    """Dashboard figures (from counters; cheap at any database size)."""

    node: str
    clients: int
    activations: int
    refusals: int
    refused_connections: int = Field(
        description="gateway connections refused without an activation window (no KMS request)"
    )
    last_activation: StoredTime | None
    per_hour: list[HourCount]
    per_product: list[ProductCount]
    per_protocol: list[ProtocolCount]

    @field_validator("per_hour", "per_product", "per_protocol", mode="before")
    @classmethod
    def _from_pairs(cls, value: Any, info: ValidationInfo) -> Any:
        # The store counts as (key, count) pairs, per protocol as a {protocol: count} dict.
        key = {"per_hour": "hour", "per_product": "product", "per_protocol": "protocol"}
        name = key[str(info.field_name)]
        items = sorted(value.items()) if isinstance(value, dict) else value
        return [{name: k, "count": c} for k, c in items]

    @classmethod
    def from_stats(cls, stats: Stats, node: str) -> StatsModel:
        """Build from the store's Stats and the answering node's name."""
        return cls.model_validate({**dataclasses.asdict(stats), "node": node})


class ProductModel(BaseModel):
    """A SKU of the shipped product catalogue."""

    id: uuid.UUID
    name: str
    kms_id: uuid.UUID
    kms_name: str
    application_id: uuid.UUID
    application_name: str
    gvlk: str | None
    default_protocol: int
    n_count_policy: int


def product_models(catalog: Catalog, search: str | None) -> list[ProductModel]:
    """Catalogue SKUs matching search (all when empty), sorted by name."""
    skus: list[Sku] = catalog.search(search) if search and search.strip() else list(catalog.skus)
    out = []
    for sku in sorted(skus, key=lambda s: s.name.casefold()):
        kms = catalog.kms_id(sku.kms_id)
        app = catalog.application(sku.application_id)
        out.append(
            ProductModel(
                id=sku.id,
                name=sku.name,
                kms_id=sku.kms_id,
                kms_name=kms.name if kms else str(sku.kms_id),
                application_id=sku.application_id,
                application_name=app.name if app else str(sku.application_id),
                gvlk=sku.gvlk,
                default_protocol=sku.default_protocol,
                n_count_policy=sku.n_count_policy,
            )
        )
    return out


router = APIRouter(
    prefix="/api",
    tags=["api"],
    responses={
        400: {"model": ErrorModel, "description": "Bad paging cursor or parameter"},
        401: {"model": ErrorModel, "description": "Not logged in as an administrator"},
        503: {"model": ErrorModel, "description": "Database unavailable"},
    },
)


@router.get("/clients", response_model=ClientPage, summary="List client machines")
async def list_clients(web: Web, query: Annotated[ClientQuery, Query()]) -> ClientPage:
    """Clients with keyset paging; search, sort and order must stay the same across pages."""
    page = await web.store.list_clients(
        search=query.text,
        sort=query.sort,
        descending=query.order == "desc",
        cursor=query.cursor,
        limit=query.limit,
    )
    return ClientPage.model_validate(page)


@router.get(
    "/clients/{cmid}",
    response_model=ClientDetail,
    summary="One client and its history",
    responses={404: {"model": ErrorModel, "description": "Unknown CMID"}},
)
async def get_client(web: Web, cmid: CmidParam, paging: Annotated[Paging, Query()]) -> ClientDetail:
    """The client with this CMID and a page of its requests, newest first."""
    row = await web.store.get_client(cmid)
    if row is None:
        raise HTTPException(404, f"no client with CMID {cmid}")
    history = await web.store.client_history(cmid, cursor=paging.cursor, limit=paging.limit)
    return ClientDetail(
        client=ClientModel.model_validate(row), history=ActivationPage.model_validate(history)
    )


@router.get("/activations", response_model=ActivationPage, summary="List requests")
async def list_activations(web: Web, query: Annotated[ActivationQuery, Query()]) -> ActivationPage:
    """Stored requests, newest first, filtered by time range, result and node."""
    start, end = query.time_range()
    page = await web.store.list_activations(
        since=start,
        until=end,
        result=query.result,
        node=query.node or None,
        cursor=query.cursor,
        limit=query.limit,
    )
    return ActivationPage.model_validate(page)


@router.get("/stats", response_model=StatsModel, summary="Dashboard figures")
async def stats(web: Web) -> StatsModel:
    """Counts, requests per hour over 7 days, per product and per protocol."""
    return StatsModel.from_stats(await web.store.stats(web.now()), web.node_name)


@router.get("/products", response_model=list[ProductModel], summary="Product catalogue")
async def products(web: Web, query: Annotated[SearchQuery, Query()]) -> list[ProductModel]:
    """SKUs of the shipped catalogue (not the database) matching search."""
    return product_models(web.catalog, query.search)
