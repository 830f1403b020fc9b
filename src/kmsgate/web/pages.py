"""HTML pages of the dashboard: overview, clients, client history, activations, products, docs."""

from __future__ import annotations

import functools
import hmac
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote, urlencode

import jinja2
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

from kmsgate import __version__
from kmsgate.catalog import Catalog
from kmsgate.observability.display import template_value
from kmsgate.store.database import Store
from kmsgate.store.errors import StoreError
from kmsgate.web.api import (
    DEFAULT_LIMIT,
    CmidParam,
    CursorParam,
    LimitParam,
    NodeParam,
    OrderParam,
    ResultParam,
    SearchParam,
    SinceParam,
    SortKey,
    SortParam,
    UntilParam,
    license_status_name,
    product_models,
    time_range,
)
from kmsgate.web.auth import Admin, Authenticator, client_ip, safe_next

TEMPLATES_DIR = Path(__file__).parent / "templates"


class LoginRequired(Exception):  # noqa: N818 - control flow, not an error condition
    """Raised by page dependencies without a session; the app turns it into a redirect."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def fmt_time(value: datetime | None) -> str:
    """`2024-05-01 13:45:07` in UTC, or an em dash."""
    if value is None:
        return "—"
    return _as_utc(value).strftime("%Y-%m-%d %H:%M:%S")


def iso_time(value: datetime | None) -> str:
    """ISO 8601 UTC for <time datetime=...>."""
    return "" if value is None else _as_utc(value).isoformat().replace("+00:00", "Z")


def fmt_int(value: int | None) -> str:
    """Thousands separated with thin spaces, readable in any locale."""
    return "—" if value is None else f"{value:,}".replace(",", "\u202f")


def fmt_hresult(value: int) -> str:
    """0x-prefixed 8-digit HRESULT."""
    return f"0x{value & 0xFFFFFFFF:08X}"


def url_with(path: str, params: Mapping[str, object | None]) -> str:
    """path?query with empty and None values left out."""
    query = urlencode([(k, str(v)) for k, v in params.items() if v is not None and v != ""])
    return f"{path}?{query}" if query else path


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar of an SVG chart, in viewBox units."""

    x: float
    y: float
    width: float
    height: float
    label: str


@dataclass(frozen=True, slots=True)
class Tick:
    """An axis tick: position in viewBox units and its label."""

    pos: float
    label: str


@dataclass(frozen=True, slots=True)
class HourChart:
    """Geometry of the requests-per-hour bar chart, computed here so the template only draws."""

    width: int
    height: int
    left: int
    top: int
    plot_width: int
    plot_height: int
    bars: list[Bar]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    total: int
    peak: int
    busiest: list[tuple[str, int]]


def _nice_ceiling(value: int) -> int:
    """Smallest 1/2/5 x 10^n at or above value, so y-axis labels are round numbers."""
    if value <= 1:
        return 1
    exp = int(10 ** math.floor(math.log10(value)))
    for step in (1, 2, 5, 10):
        if step * exp >= value:
            return step * exp
    return 10 * exp  # pragma: no cover - the loop always returns


def hour_chart(per_hour: Sequence[tuple[datetime, int]]) -> HourChart:
    """Bars for hourly buckets (oldest first), day ticks at midnight UTC, 3 y-axis ticks."""
    left, top, plot_w, plot_h = 44, 8, 840, 160
    n = max(len(per_hour), 1)
    slot = plot_w / n
    peak = max((c for _, c in per_hour), default=0)
    scale = _nice_ceiling(peak)
    bars: list[Bar] = []
    x_ticks: list[Tick] = []
    for i, (hour, count) in enumerate(per_hour):
        hour = _as_utc(hour)
        x = left + i * slot
        if hour.hour == 0:
            # A label needs ~60 units; one too close to the right edge would be clipped.
            label = hour.strftime("%a %d %b") if x < left + plot_w - 60 else ""
            x_ticks.append(Tick(round(x, 2), label))
        if count:
            h = max(plot_h * count / scale, 1.0)
            label = f"{hour:%Y-%m-%d %H:00} UTC: {count} request{'s' if count != 1 else ''}"
            bars.append(
                Bar(
                    round(x + 0.5, 2),
                    round(top + plot_h - h, 2),
                    round(max(slot - 1, 1), 2),
                    round(h, 2),
                    label,
                )
            )
    y_ticks = [
        Tick(round(top + plot_h - plot_h * f, 2), fmt_int(round(scale * f))) for f in (0, 0.5, 1)
    ]
    busiest = sorted(
        ((f"{_as_utc(h):%Y-%m-%d %H:00}", c) for h, c in per_hour if c), key=lambda t: -t[1]
    )[:10]
    return HourChart(
        width=left + plot_w + 8,
        height=top + plot_h + 24,
        left=left,
        top=top,
        plot_width=plot_w,
        plot_height=plot_h,
        bars=bars,
        x_ticks=x_ticks,
        y_ticks=y_ticks,
        total=sum(c for _, c in per_hour),
        peak=peak,
        busiest=busiest,
    )


@dataclass(frozen=True, slots=True)
class Refusals:
    """Refusals on the overview: refused KMS requests and gateway connections without a window."""

    kms: int
    gateway: int

    @property
    def total(self) -> int:
        return self.kms + self.gateway


@dataclass(frozen=True, slots=True)
class ClientCommands:
    """What the portal tells a Windows or Office client to set, to activate against us."""

    skms: str  # slmgr /skms HOST:PORT ([V6]:PORT)
    sethst: str  # ospp.vbs /sethst:HOST
    setprt: int  # ospp.vbs /setprt:PORT


@dataclass(frozen=True, slots=True)
class KmsAddress:
    """Where clients reach the KMS listener: --public-address, else the portal's own name."""

    host: str | None = None  # None: the host name the browser used for the portal
    port: int = 1688

    def commands(self, browser_host: str | None) -> ClientCommands:
        """The commands for a browser that reached the portal as `browser_host`."""
        host = self.host or browser_host or "this-server"
        host = host.strip("[]")
        skms_host = f"[{host}]" if ":" in host else host
        return ClientCommands(skms=f"{skms_host}:{self.port}", sethst=host, setprt=self.port)


def product_bars(per_product: Sequence[tuple[str, int]]) -> list[tuple[str, int, float]]:
    """(label, count, percent of the largest) for horizontal bars."""
    top = max((c for _, c in per_product), default=0)
    return [(name, count, 100.0 * count / top if top else 0.0) for name, count in per_product]


# Sortable client columns: key, header, direction on first click (names A-Z, numbers high first).
CLIENT_COLUMNS: tuple[tuple[SortKey, str, str], ...] = (
    ("machine_name", "Machine", "asc"),
    ("sku_name", "Product", "asc"),
    ("first_seen", "First seen", "desc"),
    ("last_seen", "Last seen", "desc"),
    ("request_count", "Requests", "desc"),
)


@functools.cache
def template_environment() -> jinja2.Environment:
    """The Jinja2 environment: autoescaping on, undefined variables are errors.

    Shared by every app in the process so templates compile once; it holds no per-app state.
    """
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,  # package data does not change under a running server
        # Stored strings show bidi marks, separators and controls as escapes (\u202e).
        finalize=template_value,
    )
    env.filters.update(
        time=fmt_time,
        iso=iso_time,
        num=fmt_int,
        hresult=fmt_hresult,
        status_name=license_status_name,
    )
    return env


class Renderer:
    """Renders templates with the context every page needs (node, admin, CSRF, version)."""

    def __init__(self, *, node_name: str, home: str = "/") -> None:
        """node_name is shown on every page; home is the admin overview's path."""
        self.templates = Jinja2Templates(env=template_environment())
        self.node_name = node_name
        self.home = home

    def page(
        self,
        request: Request,
        template: str,
        context: Mapping[str, Any] | None = None,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> HTMLResponse:
        """Render a template; `admin` is the session's admin or None (login and error pages)."""
        admin: Admin | None = getattr(request.state, "admin", None)
        ctx: dict[str, Any] = {
            "admin": admin,
            "node_name": self.node_name,
            "home": self.home,
            "version": __version__,
            "active": "",
            "title": "",
        }
        ctx.update(context or {})
        return self.templates.TemplateResponse(
            request, template, ctx, status_code=status, headers=headers
        )

    def error(
        self,
        request: Request,
        status: int,
        message: str,
        *,
        title: str | None = None,
        details: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
    ) -> HTMLResponse:
        """An error page with a readable message."""
        titles = {
            400: "Bad request",
            404: "Not found",
            405: "Method not allowed",
            422: "Invalid input",
        }
        heading = title or titles.get(status, "Error")
        return self.page(
            request,
            "error.html",
            {"title": heading, "status": status, "message": message, "details": list(details)},
            status=status,
            headers=headers,
        )


def build_pages_router(
    store: Store,
    catalog: Catalog,
    authenticator: Authenticator,
    renderer: Renderer,
    *,
    now: Callable[[], datetime],
    overview_paths: Sequence[str] = ("/", "/dashboard"),
) -> APIRouter:
    """The HTML routes; without an admin session each redirects to /login?next=<here>.

    overview_paths: where the overview is served (gateway mode leaves / to the user portal).
    """

    async def require_admin(request: Request) -> Admin:
        admin = await authenticator.current_admin(request)
        if admin is None:
            target = request.url.path
            if request.url.query:
                target += "?" + request.url.query
            raise LoginRequired(target)
        return admin

    router = APIRouter(dependencies=[Depends(require_admin)], include_in_schema=False)

    async def overview(request: Request) -> Response:
        """Counts, requests per hour, products, latest requests."""
        stats = await store.stats(now())
        recent = await store.list_activations(limit=10)
        return renderer.page(
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

    for path in overview_paths:
        router.add_api_route(path, overview, methods=["GET"], response_class=HTMLResponse)

    @router.get("/clients", response_class=HTMLResponse)
    async def clients(
        request: Request,
        search: SearchParam = None,
        sort: SortParam = "last_seen",
        order: OrderParam = "desc",
        cursor: CursorParam = None,
        limit: LimitParam = DEFAULT_LIMIT,
    ) -> Response:
        """Searchable, sortable client table with keyset paging."""
        text = (search or "").strip()
        page = await store.list_clients(
            search=text or None, sort=sort, descending=order == "desc", cursor=cursor, limit=limit
        )
        keep: dict[str, object | None] = {
            "search": text,
            "sort": sort if sort != "last_seen" else None,
            "order": order if order != "desc" else None,
            "limit": limit if limit != DEFAULT_LIMIT else None,
        }
        columns = []
        for key, label, first in CLIENT_COLUMNS:
            current = key == sort
            next_order = ("asc" if order == "desc" else "desc") if current else first
            columns.append(
                {
                    "key": key,
                    "label": label,
                    "url": url_with("/clients", {**keep, "sort": key, "order": next_order}),
                    "aria_sort": ("descending" if order == "desc" else "ascending")
                    if current
                    else None,
                }
            )
        return renderer.page(
            request,
            "clients.html",
            {
                "active": "clients",
                "title": "Clients",
                "page": page,
                "search": text,
                "columns": columns,
                "sort": sort,
                "order": order,
                "next_url": url_with("/clients", {**keep, "cursor": page.next_cursor})
                if page.next_cursor
                else None,
                "prev_url": url_with("/clients", {**keep, "cursor": page.prev_cursor})
                if page.prev_cursor
                else None,
            },
        )

    @router.get("/clients/{cmid}", response_class=HTMLResponse)
    async def client(
        request: Request,
        cmid: CmidParam,
        cursor: CursorParam = None,
        limit: LimitParam = DEFAULT_LIMIT,
    ) -> Response:
        """One client's details and request history."""
        row = await store.get_client(cmid)
        if row is None:
            return renderer.error(request, 404, f"No client with CMID {cmid} has been seen.")
        history = await store.client_history(cmid, cursor=cursor, limit=limit)
        base = f"/clients/{quote(str(cmid))}"
        keep = {"limit": limit if limit != DEFAULT_LIMIT else None}
        app = catalog.application(row.application_id) if row.application_id else None
        kms = catalog.kms_id(row.kms_id) if row.kms_id else None
        return renderer.page(
            request,
            "client.html",
            {
                "active": "clients",
                "title": row.machine_name or str(cmid),
                "client": row,
                "application_name": app.name if app else None,
                "kms_name": kms.name if kms else None,
                "history": history,
                "next_url": url_with(base, {**keep, "cursor": history.next_cursor})
                if history.next_cursor
                else None,
                "prev_url": url_with(base, {**keep, "cursor": history.prev_cursor})
                if history.prev_cursor
                else None,
            },
        )

    @router.get("/activations", response_class=HTMLResponse)
    async def activations(
        request: Request,
        since: SinceParam = None,
        until: UntilParam = None,
        result: ResultParam = None,
        node: NodeParam = None,
        cursor: CursorParam = None,
        limit: LimitParam = DEFAULT_LIMIT,
    ) -> Response:
        """All stored requests, newest first, with filters."""
        start, end = time_range(since, until)
        page = await store.list_activations(
            since=start, until=end, result=result, node=node or None, cursor=cursor, limit=limit
        )
        keep: dict[str, object | None] = {
            "since": _form_time(start),
            "until": _form_time(end),
            "result": result,
            "node": node,
            "limit": limit if limit != DEFAULT_LIMIT else None,
        }
        return renderer.page(
            request,
            "activations.html",
            {
                "active": "activations",
                "title": "Requests",
                "page": page,
                "filters": keep,
                "next_url": url_with("/activations", {**keep, "cursor": page.next_cursor})
                if page.next_cursor
                else None,
                "prev_url": url_with("/activations", {**keep, "cursor": page.prev_cursor})
                if page.prev_cursor
                else None,
            },
        )

    @router.get("/products", response_class=HTMLResponse)
    async def products(request: Request, search: SearchParam = None) -> Response:
        """The product catalogue (shipped data, not the database) with search."""
        text = (search or "").strip()
        return renderer.page(
            request,
            "products.html",
            {
                "active": "products",
                "title": "Products",
                "search": text,
                "products": product_models(catalog, text),
                "total": len(catalog.skus),
            },
        )

    @router.get("/docs", response_class=HTMLResponse)
    async def docs(request: Request) -> Response:
        """API reference rendered from the OpenAPI document (offline: no Swagger UI from a CDN)."""
        spec: dict[str, Any] = request.app.openapi()
        return renderer.page(
            request,
            "docs.html",
            {"active": "docs", "title": "API", "operations": _operations(spec)},
        )

    return router


def _form_time(value: datetime | None) -> str | None:
    """A UTC time as a datetime-local form value (no offset: the page says UTC)."""
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M")


def _schema_text(schema: Mapping[str, Any]) -> str:
    """Short type description of an OpenAPI parameter schema."""
    if "anyOf" in schema:
        kinds = [_schema_text(s) for s in schema["anyOf"] if s.get("type") != "null"]
        return " | ".join(kinds)
    if "enum" in schema:
        return " | ".join(f'"{v}"' for v in schema["enum"])
    if "const" in schema:
        return f'"{schema["const"]}"'
    text = str(schema.get("type", "object"))
    if schema.get("format"):
        text += f" ({schema['format']})"
    limits = []
    for key, word in (("minimum", "≥"), ("maximum", "≤"), ("maxLength", "max length")):
        if key in schema:
            limits.append(f"{word} {schema[key]}")
    return text + (f", {', '.join(limits)}" if limits else "")


def _operations(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Flatten an OpenAPI document into operations for the docs page."""
    ops = []
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            params = [
                {
                    "name": p["name"],
                    "where": p["in"],
                    "required": p.get("required", False),
                    "type": _schema_text(p.get("schema", {})),
                    "default": p.get("schema", {}).get("default"),
                    "description": p.get("description", ""),
                }
                for p in op.get("parameters", [])
            ]
            responses = [
                (code, r.get("description", ""))
                for code, r in sorted(op.get("responses", {}).items())
            ]
            ops.append(
                {
                    "method": method.upper(),
                    "path": path,
                    "summary": op.get("summary", ""),
                    "description": op.get("description", ""),
                    "params": params,
                    "responses": responses,
                    "anchor": op.get("operationId", f"{method}-{path}"),
                }
            )
    return ops


MAX_FORM_BYTES = 8192


async def _read_form(request: Request) -> dict[str, str]:
    """Parse a small urlencoded form, refusing big or odd bodies before reading them whole."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise HTTPException(415, "expected an application/x-www-form-urlencoded form")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, "form too large")
    try:
        pairs = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=10
        )
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "malformed form") from None
    return dict(pairs)


def build_login_router(
    authenticator: Authenticator,
    renderer: Renderer,
    *,
    client_address: Callable[[Request], str] = client_ip,
) -> APIRouter:
    """GET/POST /login and POST /logout (the only admin routes open without a session).

    client_address: the rate limiter's key for a request (the app resolves trusted proxies).
    """
    codec = authenticator.codec
    router = APIRouter(include_in_schema=False)

    def landing(next_url: str | None) -> str:
        # A bare "/" means "the dashboard", which is not / when the user portal owns it.
        target = safe_next(next_url)
        return renderer.home if target == "/" else target

    async def has_admin() -> bool:
        # Only a hint for the very first login: a store that does not answer shows none.
        try:
            return await authenticator.store.has_admin()
        except StoreError:
            return True

    async def login_page(
        request: Request, next_url: str, *, status: int = 200, message: str = "", username: str = ""
    ) -> Response:
        # Keep a still-valid token: a failed login in one tab must not expire another tab's form.
        token = codec.login_csrf_token(request.cookies.get(codec.csrf_cookie))
        signed = None
        if token is None:
            token, signed = codec.new_login_csrf()
        response = renderer.page(
            request,
            "login.html",
            {
                "title": "Log in",
                "csrf_token": token,
                "next": next_url,
                "message": message,
                "username": username,
                "has_admin": await has_admin(),
            },
            status=status,
        )
        if signed is not None:
            codec.set_login_csrf(response, signed)
        return response

    @router.get("/login", response_class=HTMLResponse)
    async def login_form(
        request: Request, next_url: Annotated[str | None, Query(alias="next")] = None
    ) -> Response:
        """The login form; already signed-in admins go straight on."""
        target = landing(next_url)
        if await authenticator.current_admin(request) is not None:
            return RedirectResponse(target, status_code=303)
        request.state.admin = None
        return await login_page(request, target)

    @router.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        """Check CSRF, rate limit and credentials; set the session cookie."""
        request.state.admin = None
        form = await _read_form(request)
        target = landing(form.get("next"))
        username = form.get("username", "").strip()
        if not codec.check_login_csrf(
            request.cookies.get(codec.csrf_cookie), form.get("csrf_token", "")
        ):
            return await login_page(
                request,
                target,
                status=400,
                message="The login form expired. Please try again.",
                username=username,
            )
        result = await authenticator.login(
            client_address(request), username, form.get("password", "")
        )
        if result.cookie is None:
            response = await login_page(
                request, target, status=result.status, message=result.message, username=username
            )
            if result.retry_after:
                response.headers["Retry-After"] = str(math.ceil(result.retry_after))
            return response
        response = RedirectResponse(target, status_code=303)
        codec.set_session(response, result.cookie)
        codec.clear_login_csrf(response)
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        """End the session (CSRF-checked, so other sites cannot log the admin out)."""
        form = await _read_form(request)
        admin = await authenticator.current_admin(request)
        if admin is not None and not hmac.compare_digest(
            admin.csrf_token.encode(), form.get("csrf_token", "").encode()
        ):
            raise HTTPException(400, "invalid CSRF token; reload the page and try again")
        if admin is not None:
            await authenticator.end_session(admin)
        response = RedirectResponse("/login", status_code=303)
        codec.clear_session(response)
        return response

    return router
