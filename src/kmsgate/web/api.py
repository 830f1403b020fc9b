"""JSON API of the dashboard (`/api/...`): response models, query parameters and routes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Security
from fastapi.security import APIKeyCookie
from pydantic import BaseModel, ConfigDict, Field

from kmsgate.catalog import Catalog, Sku
from kmsgate.protocol.licensing import license_status_name as license_status_name
from kmsgate.store.database import Store
from kmsgate.store.records import ActivationRow, ClientRow, Page, Stats
from kmsgate.web.auth import Admin, Authenticator

# Shared with pages.py so the HTML and JSON routes accept exactly the same input.
SortKey = Literal["last_seen", "first_seen", "machine_name", "sku_name", "request_count"]
Order = Literal["asc", "desc"]
Result = Literal["activated", "refused"]
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_SEARCH = 200
MAX_CURSOR = 2048  # the store's own cap on cursor length
MAX_NODE = 100
# Control characters never occur in what we search for, and PostgreSQL rejects NUL outright.
NO_CONTROL_CHARS = r"^[^\x00-\x1f\x7f]*$"
PRINTABLE_ASCII = r"^[!-~]*$"

SearchParam = Annotated[
    str | None,
    Query(
        max_length=MAX_SEARCH,
        pattern=NO_CONTROL_CHARS,
        description="Machine name or SKU name substring, exact CMID, or address prefix.",
    ),
]
CursorParam = Annotated[
    str | None,
    Query(
        max_length=MAX_CURSOR,
        pattern=PRINTABLE_ASCII,
        description="Opaque cursor from a previous page's next_cursor or prev_cursor.",
    ),
]
LimitParam = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page.")]
SortParam = Annotated[SortKey, Query(description="Column to sort by.")]
OrderParam = Annotated[Order, Query(description="Sort direction.")]
CmidParam = Annotated[
    uuid.UUID,
    Path(description="Client machine id (CMID), a GUID.", examples=[str(uuid.UUID(int=1))]),
]
SinceParam = Annotated[
    datetime | None,
    Query(description="Only requests at or after this time (ISO 8601; UTC if no offset)."),
]
UntilParam = Annotated[
    datetime | None,
    Query(description="Only requests before this time (ISO 8601; UTC if no offset)."),
]
ResultParam = Annotated[Result | None, Query(description="Only served or only refused requests.")]
NodeParam = Annotated[
    str | None,
    Query(
        max_length=MAX_NODE,
        pattern=NO_CONTROL_CHARS,
        description="Only requests answered by this node.",
    ),
]


def as_utc(value: datetime | None, name: str) -> datetime | None:
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
    start, end = as_utc(since, "since"), as_utc(until, "until")
    if start is not None and end is not None and start > end:
        raise HTTPException(400, "since must not be later than until")
    return start, end


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; the store writes UTC, so say so on the way out.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class ErrorModel(BaseModel):
    """Error body of every 4xx/5xx JSON response."""

    detail: str


class ClientModel(BaseModel):
    """A client machine and its latest request."""

    model_config = ConfigDict(frozen=True)

    cmid: uuid.UUID
    machine_name: str
    application_id: uuid.UUID | None
    sku_id: uuid.UUID | None
    sku_name: str
    kms_id: uuid.UUID | None
    license_status: int | None
    license_status_name: str | None
    first_seen: datetime
    last_seen: datetime
    request_count: int
    last_epid: str | None
    last_address: str
    last_protocol: int | None

    @classmethod
    def from_row(cls, row: ClientRow) -> ClientModel:
        """Build from a store row."""
        return cls(
            cmid=row.cmid,
            machine_name=row.machine_name,
            application_id=row.application_id,
            sku_id=row.sku_id,
            sku_name=row.sku_name,
            kms_id=row.kms_id,
            license_status=row.license_status,
            license_status_name=license_status_name(row.license_status),
            first_seen=_utc(row.first_seen),
            last_seen=_utc(row.last_seen),
            request_count=row.request_count,
            last_epid=row.last_epid,
            last_address=row.last_address,
            last_protocol=row.last_protocol,
        )


class ActivationModel(BaseModel):
    """One stored KMS request, served or refused."""

    model_config = ConfigDict(frozen=True)

    id: int
    time: datetime
    cmid: uuid.UUID | None
    machine_name: str
    address: str
    sku_id: uuid.UUID | None
    sku_name: str
    license_status: int | None
    license_status_name: str | None
    protocol: int | None
    result: str
    hresult: int
    node: str

    @classmethod
    def from_row(cls, row: ActivationRow) -> ActivationModel:
        """Build from a store row."""
        return cls(
            id=row.id,
            time=_utc(row.time),
            cmid=row.cmid,
            machine_name=row.machine_name,
            address=row.address,
            sku_id=row.sku_id,
            sku_name=row.sku_name,
            license_status=row.license_status,
            license_status_name=license_status_name(row.license_status),
            protocol=row.protocol,
            result=row.result,
            hresult=row.hresult,
            node=row.node,
        )


class ClientPage(BaseModel):
    """A page of clients; pass next_cursor/prev_cursor back as `cursor` to move."""

    items: list[ClientModel]
    next_cursor: str | None
    prev_cursor: str | None
    total: int | None = Field(description="Exact count when the store has it cheaply, else null.")

    @classmethod
    def from_page(cls, page: Page[ClientRow]) -> ClientPage:
        """Build from a store page."""
        return cls(
            items=[ClientModel.from_row(r) for r in page.items],
            next_cursor=page.next_cursor,
            prev_cursor=page.prev_cursor,
            total=page.total,
        )


class ActivationPage(BaseModel):
    """A page of requests, newest first."""

    items: list[ActivationModel]
    next_cursor: str | None
    prev_cursor: str | None
    total: int | None = Field(description="Exact count when the store has it cheaply, else null.")

    @classmethod
    def from_page(cls, page: Page[ActivationRow]) -> ActivationPage:
        """Build from a store page."""
        return cls(
            items=[ActivationModel.from_row(r) for r in page.items],
            next_cursor=page.next_cursor,
            prev_cursor=page.prev_cursor,
            total=page.total,
        )


class ClientDetail(BaseModel):
    """A client with a page of its request history."""

    client: ClientModel
    history: ActivationPage


class HourCount(BaseModel):
    """Requests in the hour starting at `hour` (UTC)."""

    hour: datetime
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
    last_activation: datetime | None
    per_hour: list[HourCount]
    per_product: list[ProductCount]
    per_protocol: list[ProtocolCount]

    @classmethod
    def from_stats(cls, stats: Stats, node: str) -> StatsModel:
        """Build from the store's Stats."""
        return cls(
            node=node,
            clients=stats.clients,
            activations=stats.activations,
            refusals=stats.refusals,
            refused_connections=stats.refused_connections,
            last_activation=_utc(stats.last_activation) if stats.last_activation else None,
            per_hour=[HourCount(hour=_utc(h), count=c) for h, c in stats.per_hour],
            per_product=[ProductCount(product=p, count=c) for p, c in stats.per_product],
            per_protocol=[
                ProtocolCount(protocol=p, count=c) for p, c in sorted(stats.per_protocol.items())
            ],
        )


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


_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorModel, "description": "Bad paging cursor or parameter"},
    401: {"model": ErrorModel, "description": "Not logged in as an administrator"},
    503: {"model": ErrorModel, "description": "Database unavailable"},
}


def build_api_router(
    store: Store,
    catalog: Catalog,
    authenticator: Authenticator,
    *,
    node_name: str,
    now: Callable[[], datetime],
) -> APIRouter:
    """The /api routes; every one requires an admin session (401 JSON otherwise)."""
    # Declared as a security scheme so /openapi.json documents how the API authenticates.
    session_cookie = APIKeyCookie(
        name=authenticator.codec.session_cookie,
        auto_error=False,
        description="Session cookie set by POST /login (admin users only).",
    )

    async def require_admin(request: Request) -> Admin:
        admin = await authenticator.current_admin(request)
        if admin is None:
            raise HTTPException(401, "authentication required: log in at /login")
        return admin

    router = APIRouter(
        prefix="/api",
        tags=["api"],
        dependencies=[Security(session_cookie), Depends(require_admin)],
        responses=_ERRORS,
    )

    @router.get("/clients", response_model=ClientPage, summary="List client machines")
    async def list_clients(
        search: SearchParam = None,
        sort: SortParam = "last_seen",
        order: OrderParam = "desc",
        cursor: CursorParam = None,
        limit: LimitParam = DEFAULT_LIMIT,
    ) -> ClientPage:
        """Clients with keyset paging; search, sort and order must stay the same across pages."""
        page = await store.list_clients(
            search=(search.strip() or None) if search else None,
            sort=sort,
            descending=order == "desc",
            cursor=cursor,
            limit=limit,
        )
        return ClientPage.from_page(page)

    @router.get(
        "/clients/{cmid}",
        response_model=ClientDetail,
        summary="One client and its history",
        responses={404: {"model": ErrorModel, "description": "Unknown CMID"}},
    )
    async def get_client(
        cmid: CmidParam, cursor: CursorParam = None, limit: LimitParam = DEFAULT_LIMIT
    ) -> ClientDetail:
        """The client with this CMID and a page of its requests, newest first."""
        row = await store.get_client(cmid)
        if row is None:
            raise HTTPException(404, f"no client with CMID {cmid}")
        history = await store.client_history(cmid, cursor=cursor, limit=limit)
        return ClientDetail(
            client=ClientModel.from_row(row), history=ActivationPage.from_page(history)
        )

    @router.get("/activations", response_model=ActivationPage, summary="List requests")
    async def list_activations(
        since: SinceParam = None,
        until: UntilParam = None,
        result: ResultParam = None,
        node: NodeParam = None,
        cursor: CursorParam = None,
        limit: LimitParam = DEFAULT_LIMIT,
    ) -> ActivationPage:
        """Stored requests, newest first, filtered by time range, result and node."""
        start, end = time_range(since, until)
        page = await store.list_activations(
            since=start, until=end, result=result, node=node or None, cursor=cursor, limit=limit
        )
        return ActivationPage.from_page(page)

    @router.get("/stats", response_model=StatsModel, summary="Dashboard figures")
    async def stats() -> StatsModel:
        """Counts, requests per hour over 7 days, per product and per protocol."""
        return StatsModel.from_stats(await store.stats(now()), node_name)

    @router.get("/products", response_model=list[ProductModel], summary="Product catalogue")
    async def products(search: SearchParam = None) -> list[ProductModel]:
        """SKUs of the shipped catalogue (not the database) matching search."""
        return product_models(catalog, search)

    return router
