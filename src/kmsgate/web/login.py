"""Dashboard login and logout: GET/POST /login and POST /logout, open without a session."""

from __future__ import annotations

import hmac
import math
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.responses import Response

from kmsgate.store.errors import StoreError
from kmsgate.web.auth import client_ip, safe_next
from kmsgate.web.context import Web, WebContext
from kmsgate.web.forms import read_form
from kmsgate.web.proxies import client_address

router = APIRouter(include_in_schema=False)


def _landing(web: WebContext, next_url: str | None) -> str:
    # A bare "/" means "the dashboard", which is not / when the user portal owns it.
    target = safe_next(next_url)
    return web.renderer.home if target == "/" else target


async def _has_admin(web: WebContext) -> bool:
    # Only a hint for the very first login: a store that does not answer shows none.
    try:
        return await web.authenticator.store.has_admin()
    except StoreError:
        return True


async def _login_page(
    request: Request,
    web: WebContext,
    next_url: str,
    *,
    status: int = 200,
    message: str = "",
    username: str = "",
) -> Response:
    codec = web.authenticator.codec
    # Keep a still-valid token: a failed login in one tab must not expire another tab's form.
    token = codec.login_csrf_token(request.cookies.get(codec.csrf_cookie))
    signed = None
    if token is None:
        token, signed = codec.new_login_csrf()
    response = web.renderer.page(
        request,
        "login.html",
        {
            "title": "Log in",
            "csrf_token": token,
            "next": next_url,
            "message": message,
            "username": username,
            "has_admin": await _has_admin(web),
        },
        status=status,
    )
    if signed is not None:
        codec.set_login_csrf(response, signed)
    return response


@router.get("/login", response_class=HTMLResponse)
async def login_form(
    request: Request, web: Web, next_url: Annotated[str | None, Query(alias="next")] = None
) -> Response:
    """The login form; already signed-in admins go straight on."""
    target = _landing(web, next_url)
    if await web.authenticator.current_admin(request) is not None:
        return RedirectResponse(target, status_code=303)
    request.state.admin = None
    return await _login_page(request, web, target)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, web: Web) -> Response:
    """Check CSRF, rate limit and credentials; set the session cookie."""
    request.state.admin = None
    codec = web.authenticator.codec
    form = await read_form(request)
    target = _landing(web, form.get("next"))
    username = form.get("username", "").strip()
    if not codec.check_login_csrf(
        request.cookies.get(codec.csrf_cookie), form.get("csrf_token", "")
    ):
        message = "The login form expired. Please try again."
        return await _login_page(
            request, web, target, status=400, message=message, username=username
        )
    # The rate limiter's key: the client behind a trusted proxy, else the peer as it is.
    address = client_address(request) or client_ip(request)
    device = codec.device_of(request.cookies.get(codec.device_cookie), username)
    result = await web.authenticator.login(address, username, form.get("password", ""), device)
    if result.cookie is None:
        response = await _login_page(
            request, web, target, status=result.status, message=result.message, username=username
        )
        if result.retry_after:
            response.headers["Retry-After"] = str(math.ceil(result.retry_after))
        return response
    response = RedirectResponse(target, status_code=303)
    codec.set_session(response, result.cookie)
    codec.set_device(response, username)
    codec.clear_login_csrf(response)
    return response


@router.post("/logout")
async def logout(request: Request, web: Web) -> Response:
    """End the session (CSRF-checked, so other sites cannot log the admin out)."""
    form = await read_form(request)
    admin = await web.authenticator.current_admin(request)
    if admin is not None and not hmac.compare_digest(
        admin.csrf_token.encode(), form.get("csrf_token", "").encode()
    ):
        raise HTTPException(400, "invalid CSRF token; reload the page and try again")
    if admin is not None:
        await web.authenticator.end_session(admin, client_address(request) or client_ip(request))
    response = RedirectResponse("/login", status_code=303)
    web.authenticator.codec.clear_session(response)
    return response
