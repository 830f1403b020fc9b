"""The dashboard's HTML pages: overview, clients, one client's history, requests, products."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from starlette.responses import Response

from kmsgate.web.api import product_models
from kmsgate.web.charts import hour_chart, product_bars
from kmsgate.web.context import Web
from kmsgate.web.filters import (
    DEFAULT_LIMIT,
    ActivationQuery,
    ClientQuery,
    CmidParam,
    Paging,
    SearchQuery,
    SortKey,
)
from kmsgate.web.render import url_with


@dataclass(frozen=True, slots=True)
class Refusals:
    """Refusals on the overview: refused KMS requests and gateway connections without a window."""

    kms: int
    gateway: int

    @property
    def total(self) -> int:
        return self.kms + self.gateway


# Sortable client columns: key, header, direction on first click (names A-Z, numbers high first).
CLIENT_COLUMNS: tuple[tuple[SortKey, str, str], ...] = (
    ("machine_name", "Machine", "asc"),
    ("sku_name", "Product", "asc"),
    ("first_seen", "First seen", "desc"),
    ("last_seen", "Last seen", "desc"),
    ("request_count", "Requests", "desc"),
)


def _form_time(value: datetime | None) -> str | None:
    """A UTC time as a datetime-local form value (no offset: the page says UTC)."""
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M")


def _paging_urls(path: str, keep: dict[str, object | None], page: Any) -> dict[str, str | None]:
    """next_url and prev_url of a keyset-paged listing, None at either end."""
    return {
        "next_url": url_with(path, {**keep, "cursor": page.next_cursor})
        if page.next_cursor
        else None,
        "prev_url": url_with(path, {**keep, "cursor": page.prev_cursor})
        if page.prev_cursor
        else None,
    }


async def overview(request: Request, web: Web) -> Response:
    """Counts, requests per hour, products, latest requests."""
    stats = await web.store.stats(web.now())
    recent = await web.store.list_activations(limit=10)
    return web.renderer.page(
        request,
        "overview.html",
        {
            "active": "overview",
            "title": "Overview",
            "stats": stats,
            # A gateway refuses connections without a window before any KMS request: those
            # are no requests, yet they count as refusals too.
            "refusals": Refusals(kms=stats.refusals, gateway=stats.refused_connections),
            "chart": hour_chart(stats.per_hour),
            "products": product_bars(stats.per_product),
            "protocols": sorted(stats.per_protocol.items()),
            "recent": recent.items,
        },
    )


def overview_router(paths: Sequence[str]) -> APIRouter:
    """The overview at each of paths (gateway mode leaves / to the user portal)."""
    router = APIRouter(include_in_schema=False)
    for path in paths:
        router.add_api_route(path, overview, methods=["GET"], response_class=HTMLResponse)
    return router


router = APIRouter(include_in_schema=False)


def _client_columns(query: ClientQuery, keep: dict[str, object | None]) -> list[dict[str, Any]]:
    """Header links of the client table: a click sorts by the column or flips its order."""
    columns = []
    for key, label, first in CLIENT_COLUMNS:
        current = key == query.sort
        next_order = ("asc" if query.order == "desc" else "desc") if current else first
        aria = "descending" if query.order == "desc" else "ascending"
        columns.append(
            {
                "key": key,
                "label": label,
                "url": url_with("/clients", {**keep, "sort": key, "order": next_order}),
                "aria_sort": aria if current else None,
            }
        )
    return columns


@router.get("/clients", response_class=HTMLResponse)
async def clients(request: Request, web: Web, query: Annotated[ClientQuery, Query()]) -> Response:
    """Searchable, sortable client table with keyset paging."""
    text = query.text or ""
    page = await web.store.list_clients(
        search=query.text,
        sort=query.sort,
        descending=query.order == "desc",
        cursor=query.cursor,
        limit=query.limit,
    )
    keep: dict[str, object | None] = {
        "search": text,
        "sort": query.sort if query.sort != "last_seen" else None,
        "order": query.order if query.order != "desc" else None,
        "limit": query.limit if query.limit != DEFAULT_LIMIT else None,
    }
    return web.renderer.page(
        request,
        "clients.html",
        {
            "active": "clients",
            "title": "Clients",
            "page": page,
            "search": text,
            "columns": _client_columns(query, keep),
            "sort": query.sort,
            "order": query.order,
            **_paging_urls("/clients", keep, page),
        },
    )


@router.get("/clients/{cmid}", response_class=HTMLResponse)
async def client(
    request: Request, web: Web, cmid: CmidParam, paging: Annotated[Paging, Query()]
) -> Response:
    """One client's details and request history."""
    row = await web.store.get_client(cmid)
    if row is None:
        return web.renderer.error(request, 404, f"No client with CMID {cmid} has been seen.")
    history = await web.store.client_history(cmid, cursor=paging.cursor, limit=paging.limit)
    keep: dict[str, object | None] = {
        "limit": paging.limit if paging.limit != DEFAULT_LIMIT else None
    }
    app = web.catalog.application(row.application_id) if row.application_id else None
    kms = web.catalog.kms_id(row.kms_id) if row.kms_id else None
    return web.renderer.page(
        request,
        "client.html",
        {
            "active": "clients",
            "title": row.machine_name or str(cmid),
            "client": row,
            "application_name": app.name if app else None,
            "kms_name": kms.name if kms else None,
            "history": history,
            **_paging_urls(f"/clients/{quote(str(cmid))}", keep, history),
        },
    )


@router.get("/activations", response_class=HTMLResponse)
async def activations(
    request: Request, web: Web, query: Annotated[ActivationQuery, Query()]
) -> Response:
    """All stored requests, newest first, with filters."""
    start, end = query.time_range()
    page = await web.store.list_activations(
        since=start,
        until=end,
        result=query.result,
        node=query.node or None,
        cursor=query.cursor,
        limit=query.limit,
    )
    keep: dict[str, object | None] = {
        "since": _form_time(start),
        "until": _form_time(end),
        "result": query.result,
        "node": query.node,
        "limit": query.limit if query.limit != DEFAULT_LIMIT else None,
    }
    return web.renderer.page(
        request,
        "activations.html",
        {
            "active": "activations",
            "title": "Requests",
            "page": page,
            "filters": keep,
            **_paging_urls("/activations", keep, page),
        },
    )


@router.get("/products", response_class=HTMLResponse)
async def products(request: Request, web: Web, query: Annotated[SearchQuery, Query()]) -> Response:
    """The product catalogue (shipped data, not the database) with search."""
    text = query.text or ""
    return web.renderer.page(
        request,
        "products.html",
        {
            "active": "products",
            "title": "Products",
            "search": text,
            "products": product_models(web.catalog, text),
            "total": len(web.catalog.skus),
        },
    )
