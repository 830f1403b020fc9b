"""The dashboard application: wires store, auth, pages, API, /metrics and /healthz together."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import prometheus_client
from argon2 import PasswordHasher
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kmsgate import __version__
from kmsgate.access.gateway import Gateway
from kmsgate.access.throttle import LoginThrottle
from kmsgate.auth.passwords import HashingPool
from kmsgate.catalog import Catalog
from kmsgate.store.database import Store
from kmsgate.store.errors import InvalidCursor, StoreError, StoreUnavailable
from kmsgate.store.gateway import GatewayStore
from kmsgate.web.api import build_api_router
from kmsgate.web.audit import build_audit_router
from kmsgate.web.auth import BUSY_RETRY, Authenticator, SessionCodec, client_ip
from kmsgate.web.health import StoreHealth, health_response
from kmsgate.web.pages import (
    KmsAddress,
    LoginRequired,
    Renderer,
    build_login_router,
    build_pages_router,
)
from kmsgate.web.portal import Portal, build_portal_router, client_address
from kmsgate.web.reports import build_reports_router

log = logging.getLogger("kmsgate.web")

STATIC_DIR = Path(__file__).parent / "static"
# The exposition format generate_latest() writes; prometheus_client's CONTENT_TYPE_LATEST
# names a newer version in recent releases, which older scrapers reject.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# uvicorn's h11 parser accepts request lines far longer than this; nothing we serve needs more.
MAX_REQUEST_TARGET = 8192
CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


class SecurityHeaders:
    """Adds security headers to every response; pure ASGI so streaming is untouched."""

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        """hsts: also send Strict-Transport-Security (only behind HTTPS)."""
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Wrap send() to add the headers to the response start message."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", CSP)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("X-Frame-Options", "DENY")
                headers.setdefault("Referrer-Policy", "same-origin")
                headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
                # Everything but the static assets is per-admin data: keep it out of caches.
                headers.setdefault(
                    "Cache-Control", "public, max-age=3600" if static else "no-store"
                )
                if self.hsts:
                    headers.setdefault("Strict-Transport-Security", "max-age=31536000")
            await send(message)

        await self.app(scope, receive, send_with_headers)


class DropEmptyQueryParams:
    """Drops `name=` pairs from the query of HTML pages, so a filter form left blank is valid."""

    def __init__(self, app: ASGIApp) -> None:
        """Wrap app; JSON routes keep their query exactly as sent."""
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Rewrite the query string of GET requests for pages before routing."""
        query: bytes = scope.get("query_string", b"") if scope["type"] == "http" else b""
        if query and scope.get("method") == "GET" and not _is_json_path(str(scope["path"])):
            pairs = query.split(b"&")
            kept = [p for p in pairs if p and (b"=" not in p or p.partition(b"=")[2])]
            if len(kept) != len(pairs):
                scope = {**scope, "query_string": b"&".join(kept)}
        await self.app(scope, receive, send)


class RequestLineLimit:
    """Answers 414 when path plus query exceed max_bytes, whatever the route or server."""

    def __init__(self, app: ASGIApp, *, max_bytes: int = MAX_REQUEST_TARGET) -> None:
        """max_bytes: the longest accepted path + query string, in bytes."""
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse oversized request targets before routing or parsing them."""
        if scope["type"] == "http":
            path = scope.get("raw_path") or str(scope.get("path", "")).encode()
            if len(path) + len(scope.get("query_string", b"")) > self.max_bytes:
                response = JSONResponse({"detail": "request URI too long"}, 414)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ShedLoginsWhenBusy:
    """Answers POST /login with a bare 503 at once while the password-hashing pool is full.

    A flood of logins is then refused before its body is read, its form parsed or a page
    rendered: each refusal costs the event loop, which the KMS host shares, as little as it
    can.
    """

    def __init__(self, app: ASGIApp, *, authenticator: Authenticator) -> None:
        """authenticator: the admin login, with its hashing pool."""
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse the login cheaply when no check could be taken now."""
        if (
            scope["type"] == "http"
            and scope.get("method") == "POST"
            and scope.get("path") == "/login"
            and not self.authenticator.pool.has_room()
        ):
            self.authenticator.note_busy()
            response = PlainTextResponse(
                "Too many logins are being checked right now. Try again in a few seconds.\n",
                503,
                headers={"Retry-After": str(BUSY_RETRY), "Connection": "close"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _is_json_path(path: str) -> bool:
    return path == "/api" or path.startswith(("/api/", "/openapi.json", "/healthz"))


def _wants_json(request: Request) -> bool:
    return _is_json_path(request.url.path)


def _validation_messages(exc: RequestValidationError) -> list[str]:
    """`where: what` lines for an HTML error page."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body"))
        lines.append(f"{where or 'request'}: {err.get('msg', 'invalid value')}")
    return lines


def create_app(
    store: Store,
    *,
    catalog: Catalog,
    metrics_registry: prometheus_client.CollectorRegistry | None,
    secret_key: bytes,
    secure_cookies: bool,
    node_name: str,
    login_limiter: LoginThrottle | None = None,
    password_hasher: PasswordHasher | None = None,
    password_pool: HashingPool | None = None,
    clock: Callable[[], datetime] | None = None,
    gateway: Gateway | None = None,
    trust_proxy: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
    portal_limiter: LoginThrottle | None = None,
    kms_address: KmsAddress | None = None,
    store_health: StoreHealth | None = None,
) -> FastAPI:
    """Build the dashboard over an open store; metrics_registry None serves the default registry.

    With a gateway, / is the user portal and the overview moves to /dashboard. trust_proxy:
    proxies whose X-Forwarded-For names the client. kms_address: the KMS host and port the
    portal tells clients to use (default: its own host name, 1688). store_health: the record
    writer's state, which /healthz reports. login_limiter, portal_limiter, password_hasher,
    password_pool and clock exist for tests; the defaults suit production.
    """
    now = clock or (lambda: datetime.now(UTC))
    registry = metrics_registry if metrics_registry is not None else prometheus_client.REGISTRY
    codec = SessionCodec(secret_key, secure=secure_cookies)
    authenticator = Authenticator(
        store,
        codec,
        limiter=login_limiter,
        hasher=password_hasher,
        pool=password_pool,
        node=node_name,
    )
    renderer = Renderer(node_name=node_name, home="/dashboard" if gateway else "/")
    proxies = tuple(trust_proxy)

    def resolve_address(request: Request) -> str | None:
        return client_address(request, proxies)

    def limiter_key(request: Request) -> str:
        return resolve_address(request) or client_ip(request)

    # Swagger UI and ReDoc load their JS from a CDN; /docs is our own server-rendered page.
    app = FastAPI(
        title="kmsgate dashboard API",
        version=__version__,
        description="JSON API of the kmsgate dashboard (read-only; log in at /login first)"
        + (" and the gateway's POST /api/login for portal accounts." if gateway else "."),
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.include_router(build_login_router(authenticator, renderer, client_address=limiter_key))
    if gateway is not None:
        portal = Portal(gateway, portal_limiter or LoginThrottle())
        app.include_router(
            build_portal_router(
                portal, codec, renderer, resolve_address=resolve_address, kms_address=kms_address
            )
        )
    overview_paths = ("/dashboard",) if gateway is not None else ("/", "/dashboard")
    app.include_router(
        build_pages_router(
            store, catalog, authenticator, renderer, now=now, overview_paths=overview_paths
        )
    )
    api = build_api_router(store, catalog, authenticator, node_name=node_name, now=now)
    app.include_router(api)
    audit_store = gateway.store if gateway is not None else GatewayStore(store)
    app.include_router(build_audit_router(audit_store, authenticator, renderer))
    app.include_router(build_reports_router(store, catalog, authenticator, renderer, now=now))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        """The OpenAPI document (admins only, like the API it describes)."""
        if await authenticator.current_admin(request) is None:
            return JSONResponse({"detail": "authentication required: log in at /login"}, 401)
        return JSONResponse(app.openapi())

    @app.get("/healthz", tags=["ops"], summary="Liveness, database and recording check")
    async def healthz() -> JSONResponse:
        """200 while the store answers and keeps every record, else 503 (web/health.py)."""
        return await health_response(store, store_health)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics")
    async def metrics() -> Response:
        """Prometheus text exposition format 0.0.4 (unauthenticated, for scrapers)."""
        return Response(
            prometheus_client.generate_latest(registry), media_type=METRICS_CONTENT_TYPE
        )

    async def show_navigation(request: Request) -> None:
        # Error pages show the menu to admins; a failing store must not turn a 404 into a 500.
        with contextlib.suppress(StoreError):
            await authenticator.current_admin(request)

    async def on_login_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        return RedirectResponse(f"/login?next={quote(exc.next_url, safe='')}", status_code=303)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers) if exc.headers else None
        if _wants_json(request):
            return JSONResponse({"detail": exc.detail}, exc.status_code, headers=headers)
        missing = exc.status_code == 404
        message = "There is no page at this address." if missing else str(exc.detail)
        await show_navigation(request)
        return renderer.error(request, exc.status_code, message, headers=headers)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        if _wants_json(request):
            return JSONResponse({"detail": jsonable_encoder(exc.errors())}, 422)
        await show_navigation(request)
        return renderer.error(
            request, 422, "Some parameters are not valid:", details=_validation_messages(exc)
        )

    async def on_invalid_cursor(request: Request, exc: Exception) -> Response:
        message = f"invalid paging cursor: {exc}" if str(exc) else "invalid paging cursor"
        if _wants_json(request):
            return JSONResponse({"detail": message}, 400)
        return renderer.error(request, 400, message.capitalize() + ". Start again from page one.")

    async def on_store_unavailable(request: Request, exc: Exception) -> Response:
        log.warning("store unavailable during %s: %s", request.url.path, exc)
        headers = {"Retry-After": "5"}
        if _wants_json(request):
            return JSONResponse({"detail": "database unavailable"}, 503, headers=headers)
        return renderer.error(
            request,
            503,
            "The database is unavailable. Try again shortly.",
            title="Service unavailable",
            headers=headers,
        )

    handlers: dict[Any, Callable[[Request, Exception], Any]] = {
        LoginRequired: on_login_required,
        StarletteHTTPException: on_http_error,
        RequestValidationError: on_validation_error,
        InvalidCursor: on_invalid_cursor,
        StoreUnavailable: on_store_unavailable,
    }
    for exc_type, handler in handlers.items():
        app.add_exception_handler(exc_type, handler)
    # The middleware added last runs outermost: the 414s get the security headers too.
    app.add_middleware(ShedLoginsWhenBusy, authenticator=authenticator)
    app.add_middleware(DropEmptyQueryParams)
    app.add_middleware(RequestLineLimit)
    app.add_middleware(SecurityHeaders, hsts=secure_cookies)
    return app
