"""The web app: create_app wires the routers of this package over one store and settings."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import prometheus_client
from fastapi import Depends, FastAPI, Security
from fastapi.staticfiles import StaticFiles

from kmsgate import __version__
from kmsgate.access.audit_trail import utc_now
from kmsgate.access.gateway import Gateway
from kmsgate.access.throttle import LoginThrottle
from kmsgate.auth.passwords import HashingPool
from kmsgate.catalog import Catalog
from kmsgate.store.database import Store
from kmsgate.store.gateway import GatewayStore
from kmsgate.store.reports import ReportStore
from kmsgate.web import api, apidocs, audit, login, ops, pages, portal, reports
from kmsgate.web.auth import Authenticator
from kmsgate.web.context import WebContext, api_admin, page_admin, session_scheme
from kmsgate.web.cookies import SessionCodec
from kmsgate.web.errors import add_error_handlers
from kmsgate.web.health import StoreHealth
from kmsgate.web.middleware import (
    DropEmptyQueryParams,
    RequestLineLimit,
    SecurityHeaders,
    ShedLoginsWhenBusy,
)
from kmsgate.web.portal_login import KmsAddress, Portal
from kmsgate.web.proxies import add_proxy_headers
from kmsgate.web.render import Renderer

if TYPE_CHECKING:
    from argon2 import PasswordHasher

STATIC_DIR = Path(__file__).parent / "static"


def _include_routers(app: FastAPI, codec: SessionCodec, *, gateway: bool) -> None:
    """The open routes, the admin pages (else a login redirect) and the admin API (else 401)."""
    app.include_router(login.router)
    if gateway:
        app.include_router(portal.router)
    admin_pages = [Depends(page_admin)]
    admin_api = [Security(session_scheme(codec)), Depends(api_admin)]
    overview = pages.overview_router(("/dashboard",) if gateway else ("/", "/dashboard"))
    for router, guard in (
        (overview, admin_pages),
        (pages.router, admin_pages),
        (apidocs.router, admin_pages),
        (api.router, admin_api),
        (audit.pages, admin_pages),
        (audit.api, admin_api),
        (reports.pages, admin_pages),
        (reports.api, admin_api),
    ):
        app.include_router(router, dependencies=guard)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(ops.router)


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
    codec = SessionCodec(secret_key, secure=secure_cookies)
    authenticator = Authenticator(
        store,
        codec,
        limiter=login_limiter,
        hasher=password_hasher,
        pool=password_pool,
        node=node_name,
    )
    portal = Portal(gateway, portal_limiter or LoginThrottle()) if gateway else None
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
    app.state.web = WebContext(
        store=store,
        catalog=catalog,
        authenticator=authenticator,
        renderer=Renderer(node_name=node_name, home="/dashboard" if gateway else "/"),
        now=clock or utc_now,
        node_name=node_name,
        audit_store=gateway.store if gateway is not None else GatewayStore(store),
        reports=ReportStore(store, catalog),
        metrics_registry=prometheus_client.REGISTRY
        if metrics_registry is None
        else metrics_registry,
        store_health=store_health,
        portal=portal,
        kms_address=kms_address or KmsAddress(),
    )
    _include_routers(app, codec, gateway=gateway is not None)
    add_error_handlers(app)
    # The middleware added last runs outermost: the 414s get the security headers too.
    app.add_middleware(ShedLoginsWhenBusy, authenticator=authenticator, portal=portal)
    app.add_middleware(DropEmptyQueryParams)
    add_proxy_headers(app, trust_proxy)
    app.add_middleware(RequestLineLimit)
    app.add_middleware(SecurityHeaders, hsts=secure_cookies)
    return app
