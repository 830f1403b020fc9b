"""What the routes share, kept on `app.state` by create_app, and the admin-only guards.

Routes are plain module-level functions; each takes the app's WebContext as a dependency
instead of closing over it, so every module's router is built once, at import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, cast

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyCookie
from prometheus_client import CollectorRegistry

from kmsgate.catalog import Catalog
from kmsgate.store.database import Store
from kmsgate.store.gateway import GatewayStore
from kmsgate.store.reports import ReportStore
from kmsgate.web.auth import Admin, Authenticator
from kmsgate.web.cookies import SessionCodec
from kmsgate.web.health import StoreHealth

if TYPE_CHECKING:
    from kmsgate.web.portal_login import KmsAddress, Portal
    from kmsgate.web.render import Renderer


@dataclass(frozen=True, slots=True, kw_only=True)
class WebContext:
    """One app's store, catalogue, login, renderer and clock; the portal in gateway mode."""

    store: Store
    catalog: Catalog
    authenticator: Authenticator
    renderer: Renderer
    now: Callable[[], datetime]
    node_name: str
    audit_store: GatewayStore
    reports: ReportStore
    metrics_registry: CollectorRegistry
    store_health: StoreHealth | None
    portal: Portal | None
    kms_address: KmsAddress


async def web_context(request: Request) -> WebContext:
    """The context create_app stored on the app (async: no thread hop per request)."""
    return cast("WebContext", request.app.state.web)


Web = Annotated[WebContext, Depends(web_context)]


class LoginRequired(Exception):  # noqa: N818 - control flow, not an error condition
    """Raised by page guards without a session; the app turns it into a redirect."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


async def page_admin(request: Request, web: Web) -> Admin:
    """The admin of an HTML page; without a session, off to /login?next=<here>."""
    admin = await web.authenticator.current_admin(request)
    if admin is None:
        target = request.url.path
        if request.url.query:
            target += "?" + request.url.query
        raise LoginRequired(target)
    return admin


async def api_admin(request: Request, web: Web) -> Admin:
    """The admin of a JSON route; 401 without a session."""
    admin = await web.authenticator.current_admin(request)
    if admin is None:
        raise HTTPException(401, "authentication required: log in at /login")
    return admin


def session_scheme(codec: SessionCodec) -> APIKeyCookie:
    """The session cookie as a security scheme, so /openapi.json says how the API logs in."""
    return APIKeyCookie(
        name=codec.session_cookie,
        auto_error=False,
        description="Session cookie set by POST /login (admin users only).",
    )
