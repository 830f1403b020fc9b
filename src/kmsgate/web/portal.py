"""The gateway's user portal: campus users log in at / or /api/login to open a window."""

from __future__ import annotations

import logging
import math
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.responses import Response

from kmsgate.access.accounts.base import MAX_USERNAME_LENGTH
from kmsgate.access.gateway import LoginOutcome
from kmsgate.auth.passwords import MAX_PASSWORD_LENGTH
from kmsgate.store.gateway import QuotaUsage
from kmsgate.web.context import Web, WebContext
from kmsgate.web.errors import ErrorModel
from kmsgate.web.forms import read_form, read_json
from kmsgate.web.portal_login import (
    Portal,
    PortalAttempt,
    window_seconds,
)
from kmsgate.web.proxies import client_address
from kmsgate.web.render import as_utc

log = logging.getLogger("kmsgate.web.portal")
# ---------------------------------------------------------------- JSON models


class LoginRequest(BaseModel):
    """Credentials of a portal account (campus account, not a dashboard administrator)."""

    username: str = Field(min_length=1, max_length=MAX_USERNAME_LENGTH)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)


class WindowModel(BaseModel):
    """The activation window: `address` may activate once before `expires_at`."""

    id: int
    address: str
    expires_at: datetime
    seconds: int = Field(description="Length of the window in seconds.")


class QuotaPeriod(BaseModel):
    """Activations used in a rolling period, the limit (null: none), when the oldest expires."""

    used: int
    limit: int | None
    resets_at: datetime | None


class QuotaModel(BaseModel):
    """Usage in the rolling week (7 days) and month (30 days), before this window."""

    week: QuotaPeriod
    month: QuotaPeriod
    open_windows: int = Field(
        0,
        description="Other windows of the user still open or in use: they count against "
        "both limits until they end unused.",
    )


class LoginResponse(BaseModel):
    """A granted window, the user's quota and a message to show."""

    window: WindowModel
    quota: QuotaModel
    message: str


def quota_model(usage: QuotaUsage | None, week: int | None, month: int | None) -> QuotaModel:
    """The quota part of a login answer."""
    usage = usage or QuotaUsage(0, 0, None, None)
    return QuotaModel(
        week=QuotaPeriod(
            used=usage.week_used,
            limit=week,
            resets_at=as_utc(usage.week_resets_at) if usage.week_resets_at else None,
        ),
        month=QuotaPeriod(
            used=usage.month_used,
            limit=month,
            resets_at=as_utc(usage.month_resets_at) if usage.month_resets_at else None,
        ),
        open_windows=usage.open_windows,
    )


def _login_schema() -> dict[str, Any]:
    schema = LoginRequest.model_json_schema()
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    }


_LOGIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorModel, "description": "Wrong user name or password"},
    403: {"model": ErrorModel, "description": "Quota used up (the message says when it resets)"},
    413: {"model": ErrorModel, "description": "Body over 8 KiB"},
    415: {"model": ErrorModel, "description": "Body is not application/json"},
    422: {"description": "Malformed body (the values are never echoed)"},
    429: {
        "model": ErrorModel,
        "description": "Too many failed logins; see the Retry-After header",
    },
    503: {"model": ErrorModel, "description": "Account server or database unavailable"},
}


# ---------------------------------------------------------------- routes


def _validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Error locations and messages without the input (which may be a password)."""
    return [
        {"loc": ["body", *err.get("loc", ())], "msg": err.get("msg", ""), "type": err["type"]}
        for err in exc.errors(include_url=False, include_input=False, include_context=False)
    ]


async def _portal(web: Web) -> Portal:
    # create_app includes these routes only in gateway mode, where the context has a portal.
    assert web.portal is not None
    return web.portal


PortalDep = Annotated[Portal, Depends(_portal)]
router = APIRouter()


def _form_page(
    request: Request,
    web: WebContext,
    portal: Portal,
    *,
    status: int = 200,
    message: str = "",
    username: str = "",
    outcome: LoginOutcome | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    codec = web.authenticator.codec
    token = codec.login_csrf_token(request.cookies.get(codec.csrf_cookie))
    signed = None
    if token is None:
        token, signed = codec.new_login_csrf()
    quota = None
    if outcome is not None and outcome.usage is not None:
        quota = quota_model(outcome.usage, outcome.quota_week, outcome.quota_month)
    response = web.renderer.page(
        request,
        "portal.html",
        {
            "title": "Activate",
            "csrf_token": token,
            "message": message,
            "username": username,
            "address": client_address(request),
            "seconds": int(portal.gateway.window.total_seconds()),
            "quota": quota,
        },
        status=status,
        headers=headers,
    )
    if signed is not None:
        codec.set_login_csrf(response, signed)
    return response


def _retry_headers(attempt: PortalAttempt) -> dict[str, str] | None:
    if attempt.retry_after <= 0:
        return None
    return {"Retry-After": str(math.ceil(attempt.retry_after))}


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def portal_form(request: Request, web: Web, portal: PortalDep) -> Response:
    """The login form of the user portal."""
    request.state.admin = None
    return _form_page(request, web, portal)


@router.post("/", response_class=HTMLResponse, include_in_schema=False)
async def portal_login(request: Request, web: Web, portal: PortalDep) -> Response:
    """Check CSRF, rate limit and credentials; show the window or why there is none."""
    request.state.admin = None
    codec = web.authenticator.codec
    form = await read_form(request)
    username = form.get("username", "").strip()[:MAX_USERNAME_LENGTH]
    if not codec.check_login_csrf(
        request.cookies.get(codec.csrf_cookie), form.get("csrf_token", "")
    ):
        message = "The login form expired. Please try again."
        return _form_page(request, web, portal, status=400, message=message, username=username)
    address = client_address(request)
    if address is None:
        message = "Your IP address cannot be determined, so no window can be opened."
        return _form_page(request, web, portal, status=400, message=message, username=username)
    typed = form.get("username", "")
    device = codec.device_of(request.cookies.get(codec.device_cookie), typed)
    attempt = await portal.login(address, typed, form.get("password", ""), device)
    outcome = attempt.outcome
    if outcome is None or outcome.window is None:
        response = _form_page(
            request,
            web,
            portal,
            status=attempt.status,
            message=attempt.message,
            username=username,
            outcome=outcome,
            headers=_retry_headers(attempt),
        )
        if outcome is not None and outcome.status == 403:  # the password was right
            codec.set_device(response, typed)
        return response
    window = outcome.window
    response = web.renderer.page(
        request,
        "portal_result.html",
        {
            "title": "Activate now",
            "window": window,
            "seconds": window_seconds(window),
            "message": outcome.message,
            "quota": quota_model(outcome.usage, outcome.quota_week, outcome.quota_month),
            "kms": web.kms_address.commands(request.url.hostname),
        },
    )
    codec.set_device(response, typed)
    return response


@router.post(
    "/api/login",
    tags=["portal"],
    summary="Open an activation window",
    response_model=LoginResponse,
    responses=_LOGIN_RESPONSES,
    openapi_extra=_login_schema(),
)
async def api_login(request: Request, portal: PortalDep) -> Response:
    """Log in with a portal account: the caller's address may then activate once, soon.

    For scripts; no cookie and no CSRF token, but the same rate limit as the login form.
    """
    body = await read_json(request)
    if isinstance(body, JSONResponse):
        return body
    try:
        credentials = LoginRequest.model_validate_json(body)
    except ValidationError as exc:
        return JSONResponse({"detail": _validation_errors(exc)}, 422)
    address = client_address(request)
    if address is None:
        return JSONResponse({"detail": "cannot determine the client address"}, 400)
    attempt = await portal.login(address, credentials.username, credentials.password)
    outcome = attempt.outcome
    if outcome is None or outcome.window is None:
        return JSONResponse(
            {"detail": attempt.message}, attempt.status, headers=_retry_headers(attempt)
        )
    window = outcome.window
    answer = LoginResponse(
        window=WindowModel(
            id=window.id,
            address=window.address,
            expires_at=as_utc(window.expires_at),
            seconds=window_seconds(window),
        ),
        quota=quota_model(outcome.usage, outcome.quota_week, outcome.quota_month),
        message=outcome.message,
    )
    return JSONResponse(answer.model_dump(mode="json"))
