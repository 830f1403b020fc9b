"""Error answers: JSON for the API, an HTML page (with the menu for admins) elsewhere."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from kmsgate.store.errors import InvalidCursor, StoreError, StoreUnavailable
from kmsgate.web.context import LoginRequired, WebContext, web_context
from kmsgate.web.middleware import is_json_path

log = logging.getLogger("kmsgate.web")


class ErrorModel(BaseModel):
    """Error body of every 4xx/5xx JSON response."""

    detail: str


def _validation_messages(exc: RequestValidationError) -> list[str]:
    """`where: what` lines for an HTML error page."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body"))
        lines.append(f"{where or 'request'}: {err.get('msg', 'invalid value')}")
    return lines


async def _show_navigation(request: Request, web: WebContext) -> None:
    # Error pages show the menu to admins; a failing store must not turn a 404 into a 500.
    with contextlib.suppress(StoreError):
        await web.authenticator.current_admin(request)


async def on_login_required(request: Request, exc: Exception) -> Response:
    """A page without a session: off to the login form, which comes back here."""
    assert isinstance(exc, LoginRequired)
    return RedirectResponse(f"/login?next={quote(exc.next_url, safe='')}", status_code=303)


async def on_http_error(request: Request, exc: Exception) -> Response:
    """404s, 405s and the routes' own HTTPExceptions."""
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers) if exc.headers else None
    if is_json_path(request.url.path):
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=headers)
    web = await web_context(request)
    missing = exc.status_code == 404
    message = "There is no page at this address." if missing else str(exc.detail)
    await _show_navigation(request, web)
    return web.renderer.error(request, exc.status_code, message, headers=headers)


async def on_validation_error(request: Request, exc: Exception) -> Response:
    """Parameters that fail their model: 422 with where and what."""
    assert isinstance(exc, RequestValidationError)
    if is_json_path(request.url.path):
        return JSONResponse({"detail": jsonable_encoder(exc.errors())}, 422)
    web = await web_context(request)
    await _show_navigation(request, web)
    return web.renderer.error(
        request, 422, "Some parameters are not valid:", details=_validation_messages(exc)
    )


async def on_invalid_cursor(request: Request, exc: Exception) -> Response:
    """A paging cursor that is not ours or belongs to other filters: 400."""
    message = f"invalid paging cursor: {exc}" if str(exc) else "invalid paging cursor"
    if is_json_path(request.url.path):
        return JSONResponse({"detail": message}, 400)
    web = await web_context(request)
    return web.renderer.error(request, 400, message.capitalize() + ". Start again from page one.")


async def on_store_unavailable(request: Request, exc: Exception) -> Response:
    """The database does not answer: 503 with Retry-After."""
    log.warning("store unavailable during %s: %s", request.url.path, exc)
    headers = {"Retry-After": "5"}
    if is_json_path(request.url.path):
        return JSONResponse({"detail": "database unavailable"}, 503, headers=headers)
    web = await web_context(request)
    return web.renderer.error(
        request,
        503,
        "The database is unavailable. Try again shortly.",
        title="Service unavailable",
        headers=headers,
    )


HANDLERS: dict[Any, Callable[[Request, Exception], Any]] = {
    LoginRequired: on_login_required,
    StarletteHTTPException: on_http_error,
    RequestValidationError: on_validation_error,
    InvalidCursor: on_invalid_cursor,
    StoreUnavailable: on_store_unavailable,
}


def add_error_handlers(app: FastAPI) -> None:
    """Answer every error of the app as above."""
    for exc_type, handler in HANDLERS.items():
        app.add_exception_handler(exc_type, handler)
