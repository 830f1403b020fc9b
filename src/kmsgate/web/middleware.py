"""The web app's ASGI middleware: security headers, request-target limit, login shedding."""

from __future__ import annotations

from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kmsgate.access.throttle import LoginThrottle
from kmsgate.web.auth import BUSY_RETRY, Authenticator, client_ip
from kmsgate.web.portal_login import Portal
from kmsgate.web.proxies import client_address

# The portal's login POSTs (the form, and the API for scripts).
PORTAL_LOGINS = frozenset(("/", "/api/login"))

# uvicorn's h11 parser accepts request lines far longer than this; nothing we serve needs more.
MAX_REQUEST_TARGET = 8192
CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


def _secure_cookie(value: bytes) -> bytes:
    """A Set-Cookie value with the Secure attribute (once)."""
    attributes = {part.strip().lower() for part in value.split(b";")[1:]}
    return value if b"secure" in attributes else value + b"; Secure"


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
                # HTTPS here, or at a trusted proxy that said so (X-Forwarded-Proto: the proxy
                # middleware rewrote the scope by now): cookies only over HTTPS, and HSTS.
                https = scope.get("scheme") == "https"
                if self.hsts or https:
                    headers.setdefault("Strict-Transport-Security", "max-age=31536000")
                if https:
                    message["headers"] = [
                        (name, _secure_cookie(value) if name == b"set-cookie" else value)
                        for name, value in message["headers"]
                    ]
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
        if query and scope.get("method") == "GET" and not is_json_path(str(scope["path"])):
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
    """Answers login POSTs with a bare 503 at once while no check could be taken: the
    dashboard's (/login) while its password-hashing pool is full, the portal's (/ and
    /api/login) while its logins in progress are at their limit.

    A flood of logins is then refused before its body is read, its form parsed or a page
    rendered: each refusal costs the event loop, which the KMS host shares, as little as it
    can.
    """

    def __init__(
        self, app: ASGIApp, *, authenticator: Authenticator, portal: Portal | None = None
    ) -> None:
        """authenticator: the admin login, with its hashing pool; portal: the gateway's."""
        self.app = app
        self.authenticator = authenticator
        self.portal = portal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse the login cheaply when no check could be taken now."""
        if scope["type"] == "http" and scope.get("method") == "POST" and self._shed(scope):
            response = PlainTextResponse(
                "Too many logins are being checked right now. Try again in a few seconds.\n",
                503,
                headers={"Retry-After": str(BUSY_RETRY), "Connection": "close"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _shed(self, scope: Scope) -> bool:
        """Whether this POST is a login that would be refused as busy (and is counted so)."""
        path = scope.get("path")
        authenticator, portal = self.authenticator, self.portal
        if path == "/login":
            pool = authenticator.pool
            if pool.has_room() or (
                pool.has_room(reserved=True) and self._may_be_trusted(scope, authenticator.limiter)
            ):
                return False
            authenticator.note_busy()
            return True
        if portal is not None and path in PORTAL_LOGINS:
            if portal.has_room() or (
                portal.has_room(trusted=True) and self._may_be_trusted(scope, portal.limiter)
            ):
                return False
            portal.note_busy()
            return True
        return False

    def _may_be_trusted(self, scope: Scope, limiter: LoginThrottle) -> bool:
        """Whether this login may use the places kept for trusted ones: its browser holds a
        device cookie, or someone logged in from its address (the name is not read yet)."""
        request = Request(scope)
        codec = self.authenticator.codec
        if codec.device_of(request.cookies.get(codec.device_cookie)) is not None:
            return True
        address = client_address(request) or client_ip(request)
        return limiter.vouched(address)


def is_json_path(path: str) -> bool:
    """Whether path is answered in JSON (errors too): the API, OpenAPI and health check."""
    return path == "/api" or path.startswith(("/api/", "/openapi.json", "/healthz"))
