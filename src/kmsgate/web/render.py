"""Template rendering: the Jinja2 environment, its display filters and page/error responses."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from pydantic import AfterValidator

from kmsgate import __version__
from kmsgate.observability.display import template_value
from kmsgate.protocol.licensing import license_status_name
from kmsgate.web.auth import Admin

TEMPLATES_DIR = Path(__file__).parent / "templates"


def as_utc(value: datetime) -> datetime:
    """The time in UTC; a naive time (SQLite hands those back) is taken as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# A model field given in UTC, whatever offset (or none, from SQLite) the store handed back.
UtcTime = Annotated[datetime, AfterValidator(as_utc)]


def fmt_time(value: datetime | None) -> str:
    """`2024-05-01 13:45:07` in UTC, or an em dash."""
    if value is None:
        return "—"
    return as_utc(value).strftime("%Y-%m-%d %H:%M:%S")


def iso_time(value: datetime | None) -> str:
    """ISO 8601 UTC for <time datetime=...>."""
    return "" if value is None else as_utc(value).isoformat().replace("+00:00", "Z")


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


ERROR_TITLES = {
    400: "Bad request",
    404: "Not found",
    405: "Method not allowed",
    422: "Invalid input",
}


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
        heading = title or ERROR_TITLES.get(status, "Error")
        return self.page(
            request,
            "error.html",
            {"title": heading, "status": status, "message": message, "details": list(details)},
            status=status,
            headers=headers,
        )
