"""The gateway's user portal: form and JSON logins over a real store and local accounts."""

from __future__ import annotations

import contextlib
import html
import ipaddress
import json
import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import prometheus_client
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.types import Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from kmsgate.access.accounts.backends import build_backend
from kmsgate.access.accounts.base import LocalSettings, SqlSettings
from kmsgate.access.gateway import Gateway
from kmsgate.auth.passwords import hash_password
from kmsgate.catalog import default_catalog
from kmsgate.store.audit import AuditEvent
from kmsgate.store.database import Store
from kmsgate.store.gateway import GatewayStore
from kmsgate.web import create_app
from kmsgate.web.portal_login import PortalLimiter
from kmsgate.web.proxies import client_address, trusted_hosts
from tests.support.browser import (
    ADMIN,
    ADMIN_PASSWORD,
    FAST_HASHER,
    NODE,
    NOW,
    SECRET,
    csrf_from,
    login,
    open_store,
)

pytestmark = pytest.mark.integration

USER, USER_PASSWORD = "alice", "alice's campus password 42"
PEER = "203.0.113.7"
WINDOW = 300
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# ---------------------------------------------------------------- helpers (shared by test_audit)


def make_gateway(
    store: Store,
    *,
    quota_week: int | None = None,
    quota_month: int | None = None,
    backend: Any = None,
    clock: Any = lambda: NOW,
) -> Gateway:
    """A gateway over the store with the local account backend (fixed clock by default)."""
    return Gateway(
        GatewayStore(store),
        backend or build_backend(LocalSettings(), store=store),
        default_catalog(),
        node=NODE,
        window=timedelta(seconds=WINDOW),
        quota_week=quota_week,
        quota_month=quota_month,
        clock=clock,
    )


def make_portal_app(
    store: Store,
    gateway: Gateway | None,
    *,
    trust_proxy: Sequence[Network] = (),
    limiter: PortalLimiter | None = None,
) -> FastAPI:
    """The web app in gateway mode (gateway None: plain dashboard) with test settings."""
    return create_app(
        store,
        catalog=default_catalog(),
        metrics_registry=prometheus_client.CollectorRegistry(),
        secret_key=SECRET,
        secure_cookies=False,
        node_name=NODE,
        password_hasher=FAST_HASHER,
        clock=lambda: NOW,
        gateway=gateway,
        trust_proxy=trust_proxy,
        portal_limiter=limiter,
    )


async def open_portal_store(tmp_path: Path, *, seed: bool = False) -> Store:
    """The test store (admin, viewer) plus the campus user alice."""
    store = await open_store(tmp_path, seed=seed)
    await store.add_user(USER, hash_password(USER_PASSWORD, hasher=FAST_HASHER))
    return store


@contextlib.asynccontextmanager
async def client_from(app: FastAPI, peer: str = PEER) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client whose requests come from `peer`."""
    transport = httpx.ASGITransport(app=app, client=(peer, 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@dataclass
class Env:
    """One portal app over a fresh store."""

    store: Store
    gateway: Gateway
    app: FastAPI
    client: httpx.AsyncClient

    async def audit(self, **filters: Any) -> list[AuditEvent]:
        """Flush the gateway's audit queue and list the trail, oldest first."""
        await self.gateway.audit.flush()
        page = await self.gateway.store.list_audit(limit=1000, **filters)
        return list(reversed(page.items))


@contextlib.asynccontextmanager
async def portal_env(
    tmp_path: Path,
    *,
    quota_week: int | None = None,
    limiter: PortalLimiter | None = None,
    trust_proxy: Sequence[Network] = (),
    backend: Any = None,
    peer: str = PEER,
) -> AsyncIterator[Env]:
    """Store, gateway, app and client; closed in order afterwards."""
    store = await open_portal_store(tmp_path)
    gateway = make_gateway(store, quota_week=quota_week, quota_month=10, backend=backend)
    app = make_portal_app(store, gateway, trust_proxy=trust_proxy, limiter=limiter)
    try:
        async with client_from(app, peer) as client:
            yield Env(store, gateway, app, client)
    finally:
        await gateway.close()
        await store.close()


async def portal_login(
    client: httpx.AsyncClient,
    user: str = USER,
    password: str = USER_PASSWORD,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """GET the portal form and POST it with its CSRF token."""
    form = await client.get("/", headers=headers)
    assert form.status_code == 200
    data = {"username": user, "password": password, "csrf_token": csrf_from(form.text)}
    return await client.post("/", data=data, headers=headers)


def text_of(page: str) -> str:
    """The visible text of an HTML page, whitespace collapsed."""
    inline = re.sub(r"</?(?:strong|code|time|span|a)\b[^>]*>", "", page)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", inline)).split())


# ---------------------------------------------------------------- the form


async def test_portal_form_login_opens_a_window(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with portal_env(tmp_path, quota_week=5) as env:
        form = await env.client.get("/")
        assert form.status_code == 200
        assert 'action="/"' in form.text and 'name="csrf_token"' in form.text
        assert f'<strong class="mono">{PEER}</strong>' in form.text
        assert "within 300 seconds" in text_of(form.text)
        assert "<nav" not in form.text  # no admin menu for campus users

        response = await portal_login(env.client)
        assert response.status_code == 200, response.text
        shown = text_of(response.text)
        assert f"Activate within 300 seconds from {PEER}, once." in shown
        assert "The window closes at 2024-05-06 12:35:00 UTC" in shown
        assert 'datetime="2024-05-06T12:35:00Z"' in response.text
        assert "This week 0 of 5 used" in shown and "Last 30 days 0 of 10 used" in shown
        assert 'dur="300s"' in response.text  # the SVG countdown
        assert "slmgr /skms testserver:1688" in shown
        assert "ospp.vbs /sethst:testserver" in shown
        assert response.headers["cache-control"] == "no-store"
        # No session for portal users: only the device cookie (not a stranger next time).
        [cookie] = response.headers.get_list("set-cookie")
        assert cookie.startswith("kmsgate_device=") and "HttpOnly" in cookie

        # The window is real: the KMS host's admission consumes it once.
        window = await env.gateway.store.consume_window(PEER, NOW, NODE)
        assert window is not None and window.username == USER
        assert await env.gateway.store.consume_window(PEER, NOW, NODE) is None

        kinds = [e.kind for e in await env.audit()]
        assert kinds == ["login_ok", "window_granted"]
    assert USER_PASSWORD not in caplog.text


async def test_portal_wrong_password_is_401_and_escaped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with portal_env(tmp_path) as env:
        response = await portal_login(env.client, password="guess")
        assert response.status_code == 401
        assert '<p class="alert" role="alert">Wrong user name or password.</p>' in response.text
        assert f'value="{USER}"' in response.text  # the name is kept, the password is not
        assert "guess" not in response.text

        evil = '<script>alert("x")</script>'
        response = await portal_login(env.client, user=evil, password="<b>pw</b>")
        assert response.status_code == 401
        assert "<script>alert" not in response.text and "&lt;script&gt;" in response.text
        assert "<b>pw</b>" not in response.text and "&lt;b&gt;pw" not in response.text

        events = await env.audit()
        assert [e.kind for e in events] == ["login_failed", "login_failed"]
        assert events[0].detail == "wrong password" and events[0].address == PEER
        assert await env.gateway.store.consume_window(PEER, NOW, NODE) is None
    assert "guess" not in caplog.text and "<b>pw</b>" not in caplog.text


async def test_portal_over_quota_is_403_with_reset_time(tmp_path: Path) -> None:
    async with portal_env(tmp_path, quota_week=1) as env:
        assert (await portal_login(env.client)).status_code == 200
        taken = await env.gateway.store.consume_window(PEER, NOW, "n1")
        assert taken is not None and await env.gateway.store.spend_window(taken.id, NOW)
        response = await portal_login(env.client)
        assert response.status_code == 403
        shown = text_of(response.text)
        assert "weekly quota of 1 activation is used up" in shown
        assert "resets 2024-05-13 12:30 UTC" in shown
        assert "This week 1 of 1 used" in shown
        assert "the oldest stops counting at 2024-05-13 12:30:00" in shown
        assert [e.kind for e in await env.audit()][-1] == "login_over_quota"


async def test_portal_lockout_is_429_and_audited_once(tmp_path: Path) -> None:
    limiter = PortalLimiter(max_failures=3, max_failures_per_ip=10)
    async with portal_env(tmp_path, limiter=limiter) as env:
        for _ in range(3):
            assert (await portal_login(env.client, password="wrong")).status_code == 401
        locked = await portal_login(env.client)  # even the right password waits now
        assert locked.status_code == 429
        assert int(locked.headers["retry-after"]) == 900
        assert "Too many failed logins. Try again in about 15 minutes." in locked.text
        assert (await portal_login(env.client, password="wrong")).status_code == 429
        # Another user from the same address is not locked by alice's failures.
        assert (await portal_login(env.client, ADMIN, "nope")).status_code == 401
        kinds = [e.kind for e in await env.audit()]
        assert kinds.count("login_locked") == 1
        assert kinds.count("login_failed") == 4 and "login_ok" not in kinds
        # The JSON API shares the limit.
        api = await env.client.post(
            "/api/login", json={"username": USER, "password": USER_PASSWORD}
        )
        assert api.status_code == 429 and api.headers["retry-after"] == "900"


async def test_portal_csrf_is_required(tmp_path: Path) -> None:
    async with portal_env(tmp_path) as env:
        credentials = {"username": USER, "password": USER_PASSWORD}
        missing = await env.client.post("/", data=credentials)
        assert missing.status_code == 400 and "form expired" in missing.text
        await env.client.get("/")  # the cookie is set, but the form token is wrong
        forged = await env.client.post("/", data={**credentials, "csrf_token": "forged"})
        assert forged.status_code == 400
        # A token without its cookie (another site's form) fails too.
        token = csrf_from((await env.client.get("/")).text)
        env.client.cookies.clear()
        stolen = await env.client.post("/", data={**credentials, "csrf_token": token})
        assert stolen.status_code == 400
        assert await env.audit() == []  # the gateway was never asked


async def test_portal_account_server_down_is_503_without_lockout(tmp_path: Path) -> None:
    backend = build_backend(
        SqlSettings(
            url=f"sqlite:///{tmp_path / 'missing' / 'accounts.db'}",
            query="SELECT hash FROM accounts WHERE name = :username",
        )
    )
    limiter = PortalLimiter(max_failures=2)
    async with portal_env(tmp_path, backend=backend, limiter=limiter) as env:
        for _ in range(3):  # more than max_failures: unanswered logins do not count
            response = await portal_login(env.client)
            assert response.status_code == 503
            assert "account server is unavailable" in response.text
            assert response.headers["retry-after"] == "30"
        api = await env.client.post(
            "/api/login", json={"username": USER, "password": USER_PASSWORD}
        )
        assert api.status_code == 503
        assert api.json() == {"detail": "The account server is unavailable; try again later."}
        assert limiter.retry_after(PEER, USER) == 0


async def test_portal_refuses_odd_forms(tmp_path: Path) -> None:
    async with portal_env(tmp_path) as env:
        token = csrf_from((await env.client.get("/")).text)
        big = await env.client.post("/", data={"csrf_token": token, "username": "x" * 9000})
        assert big.status_code == 413
        raw = await env.client.post(
            "/", content=b"username=a", headers={"content-type": "text/plain"}
        )
        assert raw.status_code == 415
        empty = await env.client.post("/", data={"csrf_token": token})
        assert empty.status_code == 401


# ---------------------------------------------------------------- modes and admin pages


async def test_gateway_mode_moves_the_overview_to_dashboard(tmp_path: Path) -> None:
    async with portal_env(tmp_path) as env:
        client = env.client
        anonymous = await client.get("/dashboard")
        assert anonymous.status_code == 303
        assert anonymous.headers["location"] == "/login?next=%2Fdashboard"
        response = await login(client, next_url="")
        assert response.status_code == 303 and response.headers["location"] == "/dashboard"
        assert (await client.get("/login")).headers["location"] == "/dashboard"
        overview = await client.get("/dashboard")
        assert overview.status_code == 200 and "<h1>Overview</h1>" in overview.text
        assert '<a href="/dashboard" aria-current="page">Overview</a>' in overview.text
        assert '<a href="/audit">Audit</a>' in overview.text
        assert '<a class="brand" href="/dashboard">' in overview.text
        # / stays the portal, also for a signed-in admin.
        portal = await client.get("/")
        assert portal.status_code == 200 and 'action="/"' in portal.text
        assert "<nav" not in portal.text
        missing = await client.get("/nothing-here")
        assert 'href="/dashboard">Back to the overview' in missing.text
        client.cookies.clear()
        missing = await client.get("/nothing-here")
        assert 'href="/">Back to the activation portal' in missing.text


async def test_without_gateway_root_and_dashboard_are_the_overview(tmp_path: Path) -> None:
    store = await open_store(tmp_path, seed=False)
    try:
        async with client_from(make_portal_app(store, None)) as client:
            assert (await client.get("/")).headers["location"] == "/login?next=%2F"
            assert (await login(client, ADMIN, ADMIN_PASSWORD)).headers["location"] == "/"
            for path in ("/", "/dashboard"):
                page = await client.get(path)
                assert page.status_code == 200 and "<h1>Overview</h1>" in page.text
            assert '<a href="/" aria-current="page">Overview</a>' in page.text
            api = await client.post("/api/login", json={"username": "a", "password": "b"})
            assert api.status_code in (404, 405)
            assert (await client.post("/", data={})).status_code == 405
    finally:
        await store.close()


# ---------------------------------------------------------------- JSON API


async def test_api_login_ok(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with portal_env(tmp_path, quota_week=5) as env:
        response = await env.client.post(
            "/api/login", json={"username": f"  {USER.upper()} ", "password": USER_PASSWORD}
        )
        assert response.status_code == 401  # user names are exact in the local backend
        response = await env.client.post(
            "/api/login", json={"username": USER, "password": USER_PASSWORD}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        window = body["window"]
        assert set(window) == {"id", "address", "expires_at", "seconds"}
        assert window["address"] == PEER and window["seconds"] == WINDOW
        assert window["expires_at"] == "2024-05-06T12:35:00Z"
        assert body["quota"] == {
            "week": {"used": 0, "limit": 5, "resets_at": None},
            "month": {"used": 0, "limit": 10, "resets_at": None},
            "open_windows": 0,
        }
        assert body["message"] == (
            f"Activate within 300 seconds from {PEER}; the window serves one connection of "
            "one machine."
        )
        assert "set-cookie" not in response.headers
        consumed = await env.gateway.store.consume_window(PEER, NOW, NODE)
        assert consumed is not None and consumed.id == window["id"]
    assert USER_PASSWORD not in caplog.text


async def test_api_login_failures(tmp_path: Path) -> None:
    async with portal_env(tmp_path, quota_week=1) as env:
        api = env.client
        wrong = await api.post("/api/login", json={"username": USER, "password": "nope"})
        assert wrong.status_code == 401
        assert wrong.json() == {"detail": "Wrong user name or password."}
        assert (
            await api.post("/api/login", json={"username": USER, "password": USER_PASSWORD})
        ).status_code == 200
        taken = await env.gateway.store.consume_window(PEER, NOW, "n1")
        assert taken is not None and await env.gateway.store.spend_window(taken.id, NOW)
        over = await api.post("/api/login", json={"username": USER, "password": USER_PASSWORD})
        assert over.status_code == 403
        assert over.json()["detail"].endswith("it resets 2024-05-13 12:30 UTC.")


SECRET_PASSWORD = "hunter2-SECRET"
MALFORMED: list[tuple[Any, int]] = [
    (b"", 422),
    (b"not json", 422),
    (b"[]", 422),
    (b"{}", 422),
    (b'{"username": "alice"}', 422),
    (b'{"username": 5, "password": "' + SECRET_PASSWORD.encode() + b'"}', 422),
    (b'{"username": "alice", "password": ""}', 422),
    (b'{"username": "", "password": "' + SECRET_PASSWORD.encode() + b'"}', 422),
    (json.dumps({"username": "alice", "password": SECRET_PASSWORD * 100}).encode(), 422),
    (b'{"username": "alice", "password": "\xff\xfe"}', 422),
    (b'{"username": "alice", "password": "' + b"p" * 9000 + b'"}', 413),
]


async def test_api_login_malformed_bodies(tmp_path: Path) -> None:
    async with portal_env(tmp_path) as env:
        for body, status in MALFORMED:
            response = await env.client.post(
                "/api/login", content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == status, (body, response.text)
            assert SECRET_PASSWORD not in response.text
            assert response.json()["detail"]
        form = await env.client.post("/api/login", data={"username": USER, "password": "x"})
        assert form.status_code == 415
        assert await env.audit() == []


async def test_api_login_is_in_openapi(tmp_path: Path) -> None:
    async with portal_env(tmp_path) as env:
        assert (await env.client.get("/openapi.json")).status_code == 401
        await login(env.client)
        spec = (await env.client.get("/openapi.json")).json()
        operation = spec["paths"]["/api/login"]["post"]
        assert operation["tags"] == ["portal"] and "security" not in operation
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body["required"] == ["username", "password"]
        assert set(operation["responses"]) >= {"200", "401", "403", "422", "429", "503"}
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": "#/components/schemas/LoginResponse"}
        assert "/" not in spec["paths"]  # the HTML form is not part of the API
        docs = await env.client.get("/docs")
        assert "/api/login" in docs.text and "/api/audit" in docs.text


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.builds(
            json.dumps,
            st.dictionaries(
                st.sampled_from(["username", "password", "other"]),
                st.one_of(st.text(max_size=40), st.integers(), st.none(), st.booleans()),
            ),
        ),
        st.builds(
            lambda u, p: json.dumps({"username": u, "password": p}),
            st.one_of(st.text(max_size=300), st.sampled_from([USER, " ", "a\x00b", "ü" * 257])),
            st.text(max_size=50),
        ),
    ),
    ctype=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain"]),
)
async def test_fuzzed_api_login_never_500(
    fuzz_client: httpx.AsyncClient, body: Any, ctype: str
) -> None:
    response = await fuzz_client.post(
        "/api/login",
        content=body if isinstance(body, bytes) else body.encode(),
        headers={"content-type": ctype},
    )
    assert response.status_code < 500, response.text
    assert response.status_code != 200


@pytest.fixture
async def fuzz_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A portal client whose limiter never locks (so the fuzzer reaches the gateway)."""
    limiter = PortalLimiter(max_failures=10**9, max_failures_per_ip=10**9)
    async with portal_env(tmp_path, limiter=limiter) as env:
        yield env.client


# ---------------------------------------------------------------- client address


async def forwarded_client(
    peer: str | None, *forwarded: str, proxies: Sequence[Network] = ()
) -> str | None:
    """The client address the app sees for a request from `peer` with these X-Forwarded-For
    headers, behind the same proxy-headers middleware create_app installs."""
    seen: list[str | None] = []

    async def record(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(client_address(Request(scope)))

    app = (
        ProxyHeadersMiddleware(record, trusted_hosts=trusted_hosts(proxies)) if proxies else record
    )
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(b"x-forwarded-for", value.encode("latin-1")) for value in forwarded],
        "client": (peer, 1234) if peer is not None else None,
    }
    await app(scope, None, None)  # type: ignore[arg-type]
    [address] = seen
    return address


PROXIES = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8:ff::/48")]


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        # Untrusted peers: X-Forwarded-For is ignored (anyone can send it).
        ("203.0.113.7", ["198.51.100.1"], "203.0.113.7"),
        ("::ffff:203.0.113.7", [], "203.0.113.7"),
        ("2001:DB8::1", ["198.51.100.1"], "2001:db8::1"),
        # A trusted proxy: the right-most entry that is not a proxy is the client.
        ("10.0.0.5", ["198.51.100.1"], "198.51.100.1"),
        ("10.0.0.5", ["192.0.2.66, 198.51.100.1"], "198.51.100.1"),
        ("10.0.0.5", ["192.0.2.66, 198.51.100.1, 10.1.1.1"], "198.51.100.1"),
        ("10.0.0.5", ["192.0.2.66", "198.51.100.1, 10.9.9.9"], "198.51.100.1"),
        ("10.0.0.5", ["[2001:db8::7]:443, 10.2.2.2"], "2001:db8::7"),
        ("10.0.0.5", ["198.51.100.1:5555"], "198.51.100.1"),
        ("10.0.0.5", ["::ffff:198.51.100.1"], "198.51.100.1"),
        ("10.0.0.5", ["198.51.100.1, ::ffff:10.7.7.7"], "198.51.100.1"),  # a mapped proxy hop
        ("::ffff:10.0.0.5", ["198.51.100.1"], "198.51.100.1"),  # a dual-stack listener's peer
        ("2001:db8:ff::2", ["2001:db8::9"], "2001:db8::9"),
        # Only proxies in the chain: the left-most hop started it; none at all: the peer.
        ("10.0.0.5", ["10.3.3.3, 10.4.4.4"], "10.3.3.3"),
        ("10.0.0.5", [], "10.0.0.5"),
        ("10.0.0.5", [""], "10.0.0.5"),
        # No address where the client should be: unknown, and nothing further left (which
        # anyone can write) is believed instead.
        ("10.0.0.5", ["198.51.100.1, garbage, , 999.1.1.1, unknown"], None),
        ("10.0.0.5", ["198.51.100.1, 10.1.1.1:x"], None),
        ("10.0.0.5", ["garbage"], None),
        # Not an address at all.
        ("testclient", ["198.51.100.1"], None),
        (None, [], None),
    ],
)
async def test_client_address(peer: str | None, forwarded: list[str], expected: str | None) -> None:
    assert await forwarded_client(peer, *forwarded, proxies=PROXIES) == expected


async def test_client_address_without_trusted_proxies() -> None:
    assert await forwarded_client("10.0.0.5", "198.51.100.1") == "10.0.0.5"


@pytest.mark.parametrize("text", ["1.2.3", "1.2.3.4:", "1.2.3.4:x", "[::1", "[::1]x", "a" * 70])
async def test_malformed_forwarded_client_is_unknown(text: str) -> None:
    assert await forwarded_client("10.0.0.5", f"192.0.2.1, {text}", proxies=PROXIES) is None


async def test_spoofed_entry_left_of_a_malformed_one_opens_no_window(tmp_path: Path) -> None:
    # A proxy that writes no address for its peer (nginx writes "unix:" for a Unix socket)
    # leaves only the client's own header to the left: believing it would open a window
    # for whatever address the client names.
    proxies = [ipaddress.ip_network("10.0.0.0/8")]
    async with portal_env(tmp_path, trust_proxy=proxies, peer="10.0.0.5") as env:
        spoofed = {"x-forwarded-for": "192.0.2.99, unix:"}
        api = await env.client.post(
            "/api/login", json={"username": USER, "password": USER_PASSWORD}, headers=spoofed
        )
        assert api.status_code == 400
        assert api.json() == {"detail": "cannot determine the client address"}
        form = await portal_login(env.client, headers=spoofed)
        assert form.status_code == 400
        assert "Your IP address cannot be determined" in text_of(form.text)
        for address in ("192.0.2.99", "10.0.0.5"):
            assert await env.gateway.store.consume_window(address, NOW, NODE) is None
        assert [e.kind for e in await env.audit()] == []


async def test_trust_proxy_decides_the_window_address(tmp_path: Path) -> None:
    proxies = [ipaddress.ip_network("10.0.0.0/8")]
    async with portal_env(tmp_path, trust_proxy=proxies, peer="10.0.0.5") as env:
        headers = {"x-forwarded-for": "192.0.2.66, 198.51.100.23, 10.1.2.3"}
        form = await env.client.get("/", headers=headers)
        assert '<strong class="mono">198.51.100.23</strong>' in form.text
        response = await portal_login(env.client, headers=headers)
        assert response.status_code == 200
        assert "from 198.51.100.23, once." in text_of(response.text)
        api = await env.client.post(
            "/api/login",
            json={"username": USER, "password": USER_PASSWORD},
            headers={"x-forwarded-for": "bogus, 2001:db8::42"},
        )
        assert api.json()["window"]["address"] == "2001:db8::42"
        assert await env.gateway.store.consume_window("198.51.100.23", NOW, NODE) is not None
        assert await env.gateway.store.consume_window("10.0.0.5", NOW, NODE) is None

    # The same headers from an untrusted peer are ignored.
    async with portal_env(tmp_path / "b", trust_proxy=proxies) as env:
        response = await portal_login(env.client, headers={"x-forwarded-for": "198.51.100.23"})
        assert f"from {PEER}, once." in text_of(response.text)


async def test_lockout_follows_the_forwarded_address(tmp_path: Path) -> None:
    proxies = [ipaddress.ip_network("10.0.0.0/8")]
    limiter = PortalLimiter(max_failures=2)
    async with portal_env(tmp_path, trust_proxy=proxies, peer="10.0.0.5", limiter=limiter) as env:
        first = {"x-forwarded-for": "198.51.100.1"}
        for _ in range(2):
            assert (await portal_login(env.client, password="x", headers=first)).status_code == 401
        assert (await portal_login(env.client, headers=first)).status_code == 429
        # Behind the same proxy, another campus machine is not locked out.
        other = {"x-forwarded-for": "198.51.100.2"}
        assert (await portal_login(env.client, headers=other)).status_code == 200


# ---------------------------------------------------------------- limiter


def test_portal_limiter_counts_per_user_across_addresses() -> None:
    now = [0.0]
    limiter = PortalLimiter(
        max_failures=5, max_failures_per_ip=100, max_failures_per_user=6, clock=lambda: now[0]
    )
    for i in range(5):
        limiter.begin(f"192.0.2.{i}", "Alice")
    assert limiter.retry_after("192.0.2.99", "alice") == 0
    limiter.begin("192.0.2.6", " ALICE ")
    assert limiter.retry_after("192.0.2.99", "alice") == 900  # six failures from six places
    assert limiter.retry_after("192.0.2.99", "bob") == 0
    now[0] += 901
    assert limiter.retry_after("192.0.2.99", "alice") == 0
    # release() takes an unanswered attempt back; success() forgets the user's failures.
    for _ in range(10):
        limiter.begin("192.0.2.1", "carol")
        limiter.release("192.0.2.1", "carol")
    assert limiter.retry_after("192.0.2.1", "carol") == 0
    for _ in range(4):
        limiter.begin("192.0.2.1", "dave")
    limiter.success("192.0.2.1", "dave")
    limiter.begin("192.0.2.1", "dave")
    assert limiter.retry_after("192.0.2.1", "dave") == 0
