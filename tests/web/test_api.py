"""JSON API, login and cross-cutting HTTP behaviour, against a real SQLite store."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import prometheus_client
import pytest
import pytest_asyncio
from argon2 import PasswordHasher
from fastapi.routing import APIRoute
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.routing import BaseRoute, Mount

from kmsgate.access.throttle import LoginLimiter, LoginThrottle
from kmsgate.auth.passwords import hash_password, needs_rehash, verify_password
from kmsgate.catalog import default_catalog
from kmsgate.store.database import Store
from kmsgate.store.gateway import GatewayStore
from kmsgate.store.records import User
from kmsgate.web import create_app
from kmsgate.web.auth import safe_next
from kmsgate.web.cookies import SessionCodec
from tests.support.browser import (
    ADMIN,
    ADMIN_PASSWORD,
    FAST_HASHER,
    N_CLIENTS,
    NODE,
    NOW,
    SECRET,
    SPECIAL_CMID,
    SPECIAL_NAME,
    VIEWER,
    VIEWER_PASSWORD,
    client_for,
    csrf_from,
    login,
    make_app,
    open_store,
    seed_records,
)

# Seed: N_CLIENTS plain clients + the special one + "refused-pc" + the XSS-named one; the
# undecodable request has no CMID and makes no client.
N_ALL_CLIENTS = N_CLIENTS + 3
N_REQUESTS = len(seed_records())
PUBLIC = {"/login", "/logout", "/healthz", "/metrics", "/static"}


# Everything runs on one loop per module so read-only tests can share one seeded app.
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.integration]


@pytest_asyncio.fixture(loop_scope="module")
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh seeded store, for tests that change users or sessions."""
    s = await open_store(tmp_path)
    yield s
    await s.close()


@pytest_asyncio.fixture(loop_scope="module")
async def anon(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(make_app(store)) as client:
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    """A logged-in client of one seeded app shared by the module's read-only tests."""
    store = await open_store(tmp_path_factory.mktemp("shared"))
    async with client_for(make_app(store)) as client:
        response = await login(client)
        assert response.status_code == 303
        yield client
    await store.close()


@pytest_asyncio.fixture(loop_scope="module")
async def own_api(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    """A logged-in client of its own app and store (the test may change either)."""
    async with client_for(make_app(store)) as client:
        response = await login(client)
        assert response.status_code == 303
        yield client


async def all_pages(
    client: httpx.AsyncClient, path: str, params: dict[str, str | int]
) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Follow next_cursor to the end (bounded); returns pages and the last response body."""
    pages: list[list[dict[str, Any]]] = []
    body: dict[str, Any] = {}
    cursor = None
    for _ in range(100):
        response = await client.get(
            path, params={**params, **({"cursor": cursor} if cursor else {})}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages, [body]
    raise AssertionError("paging did not end")


def flat_routes(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route, looking into included routers (recent FastAPI keeps them nested)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from flat_routes(inner.routes)
        else:
            yield route


# ---------------------------------------------------------------- authentication


async def test_every_route_but_the_public_ones_needs_a_session(store: Store) -> None:
    app = make_app(store)
    checked = 0
    async with client_for(app) as client:
        for route in flat_routes(app.routes):
            if isinstance(route, Mount):
                assert route.path in PUBLIC
                continue
            assert isinstance(route, APIRoute)
            if route.path in PUBLIC:
                continue
            path = route.path.replace("{cmid}", str(SPECIAL_CMID))
            for method in (route.methods or {"GET"}) - {"HEAD"}:
                response = await client.request(method, path)
                if path.startswith(("/api/", "/openapi.json")):
                    assert response.status_code == 401, path
                    assert response.json()["detail"].startswith("authentication required")
                else:
                    assert response.status_code == 303, path
                    assert response.headers["location"].startswith("/login?next=%2F")
                checked += 1
    assert checked >= 12


async def test_login_sets_a_hardened_cookie_and_logout_ends_it(anon: httpx.AsyncClient) -> None:
    form = await anon.get("/login")
    assert "kmsgate_login_csrf" in form.headers["set-cookie"]
    response = await anon.post(
        "/login",
        data={
            "username": ADMIN,
            "password": ADMIN_PASSWORD,
            "csrf_token": csrf_from(form.text),
            "next": "/clients?search=pc",
        },
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/clients?search=pc"
    cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith("kmsgate_session=")
    )
    attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
    assert {"httponly", "samesite", "path", "max-age"} <= attrs
    assert "samesite=lax" in cookie.lower() and "secure" not in attrs
    assert (await anon.get("/api/stats")).status_code == 200

    page = await anon.get("/")
    assert (await anon.post("/logout", data={"csrf_token": "forged"})).status_code == 400
    assert (await anon.get("/api/stats")).status_code == 200
    out = await anon.post("/logout", data={"csrf_token": csrf_from(page.text)})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert (await anon.get("/api/stats")).status_code == 401


async def test_dashboard_logins_and_logouts_are_audited(store: Store) -> None:
    async with client_for(make_app(store)) as client:
        assert (await login(client, ADMIN, "wrong")).status_code == 401
        assert (await login(client, VIEWER, VIEWER_PASSWORD)).status_code == 401
        assert (await login(client)).status_code == 303
        page = await client.get("/")
        out = await client.post("/logout", data={"csrf_token": csrf_from(page.text)})
        assert out.status_code == 303
    page_of = await GatewayStore(store).list_audit(limit=20)
    rows = [(e.kind, e.username, e.backend, e.detail) for e in reversed(page_of.items)]
    assert rows == [
        ("login_failed", ADMIN, "dashboard", "wrong user name or password"),
        ("login_failed", VIEWER, "dashboard", "not an administrator"),
        ("login_ok", ADMIN, "dashboard", ""),
        ("logout", ADMIN, "dashboard", ""),
    ]
    assert all(e.address for e in page_of.items)


async def test_login_form_needs_its_csrf_token(store: Store) -> None:
    app = make_app(store)
    async with client_for(app) as anon, client_for(app) as other:
        await _csrf_checks(anon, other)


async def _csrf_checks(anon: httpx.AsyncClient, other: httpx.AsyncClient) -> None:
    await anon.get("/login")
    data = {"username": ADMIN, "password": ADMIN_PASSWORD}
    for token in ("", "not-the-token"):
        response = await anon.post("/login", data={**data, "csrf_token": token})
        assert response.status_code == 400
        assert "expired" in response.text
        assert "kmsgate_session" not in response.headers.get("set-cookie", "")
    # A token from another client's form does not match this client's cookie.
    token = csrf_from((await other.get("/login")).text)
    response = await anon.post("/login", data={**data, "csrf_token": token})
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("user", "password"),
    [
        (ADMIN, "wrong"),
        ("nobody", "whatever"),
        (VIEWER, VIEWER_PASSWORD),
        (ADMIN, ""),
        ("", "pw-never-echoed"),
        ("x" * 65, ADMIN_PASSWORD),
    ],
)
async def test_bad_credentials_get_401_page(
    anon: httpx.AsyncClient, user: str, password: str
) -> None:
    response = await login(anon, user, password)
    assert response.status_code == 401
    assert "Invalid user name or password." in response.text
    assert 'role="alert"' in response.text
    assert not password or password not in response.text
    assert (await anon.get("/api/stats")).status_code == 401


async def test_lockout_after_repeated_failures(store: Store) -> None:
    now = [1000.0]
    limiter = LoginThrottle(max_failures=3, window=60, lockout=300, clock=lambda: now[0])
    async with client_for(make_app(store, limiter=limiter)) as client:
        for _ in range(3):
            assert (await login(client, ADMIN, "guess")).status_code == 401
        locked = await login(client, ADMIN, ADMIN_PASSWORD)  # right password, still locked
        assert locked.status_code == 429
        assert "Too many failed logins" in locked.text
        assert 0 < int(locked.headers["Retry-After"]) <= 300
        # Another user from the same address is not locked by these failures.
        assert (await login(client, VIEWER, "guess")).status_code == 401
        now[0] += 301
        assert (await login(client, ADMIN, ADMIN_PASSWORD)).status_code == 303


async def test_parallel_guesses_cannot_outrun_the_lockout(store: Store) -> None:
    limiter = LoginThrottle(max_failures=3, window=60, lockout=300)
    async with client_for(make_app(store, limiter=limiter)) as client:
        token = csrf_from((await client.get("/login")).text)

        async def guess(n: int) -> int:
            data = {"username": ADMIN, "password": f"guess-{n}", "csrf_token": token}
            return (await client.post("/login", data=data)).status_code

        statuses = await asyncio.gather(*(guess(n) for n in range(12)))
    assert sorted(statuses) == [401] * 3 + [429] * 9


async def test_limiter_counts_per_ip_and_forgives_success() -> None:
    now = [0.0]
    limiter = LoginLimiter(
        max_failures=3, max_failures_per_ip=5, window=60, lockout=60, clock=lambda: now[0]
    )
    for _ in range(2):
        limiter.begin("1.2.3.4", "Admin")
    limiter.success("1.2.3.4", "admin")  # names compare case-insensitively
    limiter.begin("1.2.3.4", "admin")
    assert limiter.retry_after("1.2.3.4", "admin") == 0
    for name in ("a", "b", "c", "d"):
        limiter.begin("1.2.3.4", name)
    assert limiter.retry_after("1.2.3.4", "e") == 60  # per-IP limit across user names
    assert limiter.retry_after("5.6.7.8", "a") == 0
    now[0] = 61
    assert limiter.retry_after("1.2.3.4", "e") == 0
    small = LoginLimiter(max_entries=10)
    for i in range(100):
        small.begin(f"10.0.0.{i}", "x")
    assert len(small._entries) <= 10


async def test_a_flood_of_one_off_names_cannot_push_out_a_count_that_matters() -> None:
    # Full limiters forget the least-counted of their oldest keys, not simply the oldest.
    limiter = LoginLimiter(max_failures=5, max_failures_per_ip=10**9, max_entries=50)
    for _ in range(4):
        limiter.begin("192.0.2.1", "admin")
    for i in range(5000):
        limiter.begin("192.0.2.1", f"junk-{i}")
    limiter.begin("192.0.2.1", "admin")  # the fifth failure still counts: locked
    assert limiter.retry_after("192.0.2.1", "admin") > 0
    assert len(limiter._entries) <= 50


async def test_the_user_lock_binds_strangers_only() -> None:
    throttle = LoginThrottle(max_failures=5, max_failures_per_ip=30, max_failures_per_user=6)
    throttle.begin("192.0.2.1", "admin")
    throttle.success("192.0.2.1", "admin")  # the admin's own address from now on
    for i in range(6):
        throttle.begin(f"198.51.100.{i}", "admin")
    assert throttle.user_locked("Admin")
    assert throttle.retry_after("203.0.113.9", "admin") > 0  # a stranger
    assert throttle.retry_after("192.0.2.1", "admin") == 0  # where the admin logged in
    assert throttle.retry_after("203.0.113.9", "admin", device="d1") == 0  # their browser
    # The admin's known-place login does not forgive the strangers' guesses.
    throttle.begin("192.0.2.1", "admin")
    throttle.success("192.0.2.1", "admin")
    assert throttle.retry_after("203.0.113.9", "admin") > 0
    # A device's own failures lock that device, neither its address nor the account.
    for _ in range(5):
        throttle.begin("192.0.2.1", "admin", device="d1")
    assert throttle.retry_after("192.0.2.1", "admin", device="d1") > 0
    assert throttle.retry_after("192.0.2.1", "admin") == 0


async def test_secure_cookies_use_host_prefix_and_hsts(store: Store) -> None:
    app = make_app(store, secure_cookies=True)
    async with client_for(app, base_url="https://testserver") as client:
        response = await login(client)
        assert response.status_code == 303
        cookie = next(c for c in response.headers.get_list("set-cookie") if "session" in c)
        assert cookie.startswith("__Host-kmsgate_session=")
        assert "secure" in cookie.lower()
        stats = await client.get("/api/stats")
        assert stats.status_code == 200
        assert stats.headers["strict-transport-security"].startswith("max-age=")


async def test_session_cookie_is_checked_against_the_user(
    own_api: httpx.AsyncClient, store: Store
) -> None:
    value = own_api.cookies["kmsgate_session"]
    own_api.cookies.set(
        "kmsgate_session", value[:-2] + ("AA" if not value.endswith("AA") else "BB")
    )
    assert (await own_api.get("/api/stats")).status_code == 401
    own_api.cookies.set("kmsgate_session", value)
    assert (await own_api.get("/api/stats")).status_code == 200
    # Changing the password ends existing sessions.
    await store.set_password(ADMIN, FAST_HASHER.hash("a new password"))
    assert (await own_api.get("/api/stats")).status_code == 401


async def test_removed_admin_loses_access(own_api: httpx.AsyncClient, store: Store) -> None:
    await store.remove_user(ADMIN)
    assert (await own_api.get("/api/clients")).status_code == 401


async def test_password_helpers() -> None:
    stored = hash_password("s3cret pw", hasher=FAST_HASHER)
    assert stored.startswith("$argon2id$") and "s3cret" not in stored
    assert verify_password(stored, "s3cret pw", hasher=FAST_HASHER)
    assert not verify_password(stored, "s3cret PW", hasher=FAST_HASHER)
    assert not verify_password(stored, "", hasher=FAST_HASHER)
    assert not verify_password("not a hash", "s3cret pw")
    assert not verify_password(stored, "x" * 2000)
    assert not needs_rehash(stored, hasher=FAST_HASHER)
    assert needs_rehash(stored)  # the default costs are higher than FAST_HASHER's
    assert needs_rehash("not a hash")
    for bad in ("", "x" * 1025):
        with pytest.raises(ValueError, match="password"):
            hash_password(bad)


async def test_login_rehashes_weak_hashes(store: Store) -> None:
    weak = FAST_HASHER.hash("pw-of-old")
    await store.add_user("old", weak, is_admin=True)
    strong_hasher = PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1)
    app = create_app(
        store,
        catalog=default_catalog(),
        metrics_registry=None,
        secret_key=b"k" * 32,
        secure_cookies=False,
        node_name=NODE,
        password_hasher=strong_hasher,
    )
    async with client_for(app) as client:
        assert (await login(client, "old", "pw-of-old")).status_code == 303
        assert (await client.get("/api/stats")).status_code == 200  # session made with new hash
    user = await store.get_user("old")
    assert user is not None and user.password_hash != weak
    assert not needs_rehash(user.password_hash, hasher=strong_hasher)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/clients?search=x", "/clients?search=x"),
        ("//evil.example/", "/"),
        ("https://evil.example", "/"),
        ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("", "/"),
        (None, "/"),
        ("/login?next=/x", "/"),
        ("/a\r\nSet-Cookie: x=y", "/"),
        ("/" + "a" * 2000, "/"),
    ],
)
async def test_safe_next(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected


async def test_login_redirect_is_local_only(anon: httpx.AsyncClient) -> None:
    response = await login(anon, next_url="//evil.example/x")
    assert response.status_code == 303 and response.headers["location"] == "/"


async def test_login_refuses_odd_bodies(anon: httpx.AsyncClient) -> None:
    big = await anon.post(
        "/login",
        content=b"a=" + b"x" * 20000,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert big.status_code == 413
    as_json = await anon.post("/login", json={"username": ADMIN})
    assert as_json.status_code == 415
    many = await anon.post(
        "/login",
        content="&".join(f"f{i}=1" for i in range(50)).encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert many.status_code == 400
    bad_utf8 = await anon.post(
        "/login",
        content=b"username=\xff\xfe",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert bad_utf8.status_code == 400


# ---------------------------------------------------------------- clients


async def test_clients_default_listing(api: httpx.AsyncClient) -> None:
    body = (await api.get("/api/clients")).json()
    assert body["total"] == N_ALL_CLIENTS
    assert len(body["items"]) == N_ALL_CLIENTS  # fits one default page
    assert body["next_cursor"] is None and body["prev_cursor"] is None
    seen = [item["last_seen"] for item in body["items"]]
    assert seen == sorted(seen, reverse=True)
    first = body["items"][0]
    assert first["machine_name"] == SPECIAL_NAME
    assert first["cmid"] == str(SPECIAL_CMID)
    assert first["request_count"] == 3
    assert first["license_status_name"] == "licensed"
    assert first["last_seen"].endswith("Z")


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        ("accounting", {SPECIAL_NAME}),
        ("ACCOUNTING-pc", {SPECIAL_NAME}),
        (str(SPECIAL_CMID), {SPECIAL_NAME}),
        ("192.0.2.", {SPECIAL_NAME}),
        ("  pc-001.corp  ", {"pc-001.corp.example"}),
        ("no-such-machine", set()),
    ],
)
async def test_clients_search(api: httpx.AsyncClient, search: str, expected: set[str]) -> None:
    body = (await api.get("/api/clients", params={"search": search})).json()
    assert {item["machine_name"] for item in body["items"]} == expected


async def test_clients_search_by_product(api: httpx.AsyncClient) -> None:
    body = (await api.get("/api/clients", params={"search": "datacenter", "limit": 500})).json()
    assert body["items"]
    assert all("Datacenter" in item["sku_name"] for item in body["items"])


SORT_KEYS = ["last_seen", "first_seen", "machine_name", "sku_name", "request_count"]


@pytest.mark.parametrize("sort", SORT_KEYS)
@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_clients_sort_and_keyset_paging(
    api: httpx.AsyncClient, sort: str, order: str
) -> None:
    params: dict[str, str | int] = {"sort": sort, "order": order, "limit": 7}
    pages, _ = await all_pages(api, "/api/clients", params)
    items = [item for page in pages for item in page]
    assert len(pages) == -(-N_ALL_CLIENTS // 7)
    assert len({item["cmid"] for item in items}) == N_ALL_CLIENTS
    keys = [(item[sort], item["cmid"]) for item in items]
    assert keys == sorted(keys, reverse=order == "desc")

    # Walk back from the last page with prev cursors: the same pages in reverse.
    last = await api.get("/api/clients", params=params)
    cursor = last.json()["next_cursor"]
    for _ in range(len(pages) - 2):
        cursor = (await api.get("/api/clients", params={**params, "cursor": cursor})).json()[
            "next_cursor"
        ]
    tail = (await api.get("/api/clients", params={**params, "cursor": cursor})).json()
    assert tail["items"] == pages[-1] and tail["next_cursor"] is None
    back = tail
    for expected in reversed(pages[:-1]):
        back = (
            await api.get("/api/clients", params={**params, "cursor": back["prev_cursor"]})
        ).json()
        assert back["items"] == expected
    assert back["prev_cursor"] is None


async def test_cursor_from_another_listing_is_400(api: httpx.AsyncClient) -> None:
    page = (await api.get("/api/clients", params={"limit": 5, "sort": "machine_name"})).json()
    other = await api.get("/api/clients", params={"limit": 5, "cursor": page["next_cursor"]})
    assert other.status_code == 400
    assert "cursor" in other.json()["detail"]
    acts = await api.get("/api/activations", params={"cursor": page["next_cursor"]})
    assert acts.status_code == 400


async def test_client_detail_and_history_paging(api: httpx.AsyncClient) -> None:
    body = (await api.get(f"/api/clients/{SPECIAL_CMID}", params={"limit": 2})).json()
    assert body["client"]["machine_name"] == SPECIAL_NAME
    history = body["history"]
    assert history["total"] == 3
    assert len(history["items"]) == 2
    times = [h["time"] for h in history["items"]]
    assert times == sorted(times, reverse=True)
    more = (
        await api.get(
            f"/api/clients/{SPECIAL_CMID}", params={"limit": 2, "cursor": history["next_cursor"]}
        )
    ).json()
    assert len(more["history"]["items"]) == 1
    assert more["history"]["next_cursor"] is None
    assert all(h["cmid"] == str(SPECIAL_CMID) for h in more["history"]["items"])
    # Uppercase and braces-free GUID spellings name the same client.
    upper = await api.get(f"/api/clients/{str(SPECIAL_CMID).upper()}")
    assert upper.status_code == 200


async def test_unknown_and_malformed_cmid(api: httpx.AsyncClient) -> None:
    unknown = await api.get(f"/api/clients/{uuid.UUID(int=42)}")
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": f"no client with CMID {uuid.UUID(int=42)}"}
    for bad in ("not-a-guid", "1234", "%00", "11111111-2222-4333-8444-55555555555Z"):
        response = await api.get(f"/api/clients/{bad}")
        assert response.status_code == 422, bad
        assert "UUID" in str(response.json()["detail"])


# ---------------------------------------------------------------- activations and stats


async def test_activations_filters(api: httpx.AsyncClient) -> None:
    everything = (await api.get("/api/activations", params={"limit": 500})).json()
    assert len(everything["items"]) == N_REQUESTS == everything["total"]
    refused = (await api.get("/api/activations", params={"result": "refused"})).json()
    assert len(refused["items"]) == 2 and {a["result"] for a in refused["items"]} == {"refused"}
    assert refused["items"][0]["hresult"] == 0xC004F042
    node_b = (await api.get("/api/activations", params={"node": "node-b", "limit": 500})).json()
    assert node_b["items"] and {a["node"] for a in node_b["items"]} == {"node-b"}
    since, until = NOW - timedelta(hours=10), NOW - timedelta(hours=3)
    window = (
        await api.get(
            "/api/activations", params={"since": since.isoformat(), "until": until.isoformat()}
        )
    ).json()
    expected = [r for r in seed_records() if since <= r.time < until]
    assert len(window["items"]) == len(expected) > 0
    # Naive timestamps mean UTC; offsets are converted.
    naive = (
        await api.get(
            "/api/activations",
            params={
                "since": since.replace(tzinfo=None).isoformat(),
                "until": until.replace(tzinfo=None).isoformat(),
            },
        )
    ).json()
    assert naive["items"] == window["items"]
    shifted = (
        await api.get(
            "/api/activations",
            params={
                "since": since.astimezone(
                    datetime.fromisoformat("2000-01-01T00:00+05:00").tzinfo
                ).isoformat(),
                "until": until.isoformat(),
            },
        )
    ).json()
    assert shifted["items"] == window["items"]


async def test_activations_paging(api: httpx.AsyncClient) -> None:
    pages, _ = await all_pages(api, "/api/activations", {"limit": 4})
    ids = [a["id"] for page in pages for a in page]
    assert len(ids) == len(set(ids)) == N_REQUESTS
    times = [a["time"] for page in pages for a in page]
    assert times == sorted(times, reverse=True)


async def test_stats(api: httpx.AsyncClient) -> None:
    body = (await api.get("/api/stats")).json()
    assert body["node"] == NODE
    assert body["clients"] == N_ALL_CLIENTS
    assert body["activations"] == N_REQUESTS
    assert body["refusals"] == 2
    assert body["last_activation"] == "2024-05-06T12:25:00Z"
    assert len(body["per_hour"]) == 7 * 24
    assert body["per_hour"][-1]["hour"] == "2024-05-06T12:00:00Z"
    in_window = [r for r in seed_records() if r.time > NOW - timedelta(days=7)]
    assert sum(h["count"] for h in body["per_hour"]) == len(in_window)
    products = {p["product"]: p["count"] for p in body["per_product"]}
    assert sum(products.values()) == N_REQUESTS
    assert set(products) == {"Windows", "Office 2019", "Windows Server"}
    assert {p["protocol"] for p in body["per_protocol"]} == {4, 5, 6}


async def test_openapi_lists_the_api(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    for path in (
        "/api/clients",
        "/api/clients/{cmid}",
        "/api/activations",
        "/api/stats",
        "/api/products",
        "/healthz",
        "/metrics",
    ):
        assert path in spec["paths"], path
    assert "/clients" not in spec["paths"] and "/login" not in spec["paths"]
    client_page = spec["components"]["schemas"]["ClientPage"]
    assert {"items", "next_cursor", "prev_cursor", "total"} <= set(client_page["properties"])
    schemes = spec["components"]["securitySchemes"]
    assert any(s["type"] == "apiKey" and s["in"] == "cookie" for s in schemes.values())
    params = {p["name"]: p for p in spec["paths"]["/api/clients"]["get"]["parameters"]}
    assert params["limit"]["schema"]["maximum"] == 500
    assert params["search"]["schema"]["anyOf"][0]["maxLength"] == 200


async def test_products_api(api: httpx.AsyncClient) -> None:
    everything = (await api.get("/api/products")).json()
    assert len(everything) > 100
    found = (await api.get("/api/products", params={"search": "server 2019 datacenter"})).json()
    assert "Windows Server 2019 Datacenter" in {p["name"] for p in found}


# ---------------------------------------------------------------- bad input


BAD_QUERIES = [
    ("/api/clients", {"limit": "0"}, 422),
    ("/api/clients", {"limit": "10000"}, 422),
    ("/api/clients", {"limit": "ten"}, 422),
    ("/api/clients", {"limit": "1.5"}, 422),
    ("/api/clients", {"limit": "-1"}, 422),
    ("/api/clients", {"search": "x" * 201}, 422),
    ("/api/clients", {"search": "a\x00b"}, 422),
    ("/api/clients", {"sort": "password_hash"}, 422),
    ("/api/clients", {"order": "sideways"}, 422),
    ("/api/clients", {"cursor": "bm90IGEgY3Vyc29y"}, 400),
    ("/api/clients", {"cursor": "eyJ2IjoxfQ"}, 400),
    ("/api/clients", {"cursor": "!!!"}, 400),
    ("/api/clients", {"cursor": "x" * 5000}, 422),
    ("/api/clients", {"cursor": "a b"}, 422),
    ("/api/activations", {"since": "yesterday"}, 422),
    ("/api/activations", {"since": "2024-13-01"}, 422),
    ("/api/activations", {"since": "0001-01-01T00:00:00+01:00"}, 400),
    ("/api/activations", {"since": "2024-05-02", "until": "2024-05-01"}, 400),
    ("/api/activations", {"result": "maybe"}, 422),
    ("/api/activations", {"node": "n" * 101}, 422),
    ("/api/activations", {"limit": "0"}, 422),
    ("/api/activations", {"cursor": "zzzz"}, 400),
    (f"/api/clients/{SPECIAL_CMID}", {"limit": "501"}, 422),
    (f"/api/clients/{SPECIAL_CMID}", {"cursor": "zzzz"}, 400),
    ("/api/products", {"search": "s" * 300}, 422),
]


@pytest.mark.parametrize(("path", "params", "status"), BAD_QUERIES)
async def test_bad_input_is_a_clear_4xx(
    api: httpx.AsyncClient, path: str, params: dict[str, str], status: int
) -> None:
    response = await api.get(path, params=params)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["detail"]


async def test_oversized_request_targets_get_414(api: httpx.AsyncClient) -> None:
    response = await api.get("/api/clients?search=" + "A" * 60_000)
    assert response.status_code == 414
    assert response.json() == {"detail": "request URI too long"}
    assert response.headers["x-frame-options"] == "DENY"
    assert (await api.get("/" + "p" * 9000)).status_code == 414
    # Just under the limit the route's own validation answers.
    assert (await api.get("/api/clients?search=" + "A" * 8000)).status_code == 422


async def test_unknown_routes_and_methods(api: httpx.AsyncClient) -> None:
    missing = await api.get("/api/nothing-here")
    assert missing.status_code == 404 and missing.json() == {"detail": "Not Found"}
    assert (await api.get("/redoc")).status_code == 404
    assert (await api.post("/api/clients")).status_code == 405
    assert (await api.delete(f"/api/clients/{SPECIAL_CMID}")).status_code == 405


ROUTE_KEYS = {
    "/api/clients": ["search", "sort", "order", "cursor", "limit"],
    f"/api/clients/{SPECIAL_CMID}": ["cursor", "limit"],
    "/api/activations": ["since", "until", "result", "node", "cursor", "limit"],
    "/api/stats": [],
    "/api/products": ["search"],
}
text = st.text(st.characters(codec="utf-8"), max_size=40)
# Edge values any parameter might choke on.
EDGES = st.sampled_from(
    [
        "",
        "0",
        "-1",
        "501",
        "1e3",
        "asc",
        "refused",
        "2024-05-01",
        "1714521600",
        "eyJ2IjoxfQ",
        "\x00",
        "%",
        "%00",
        "' OR 1=1 --",
        str(SPECIAL_CMID),
        "x" * 250,
    ]
)


def _with_offset(moment: datetime, minutes: int) -> str:
    sign = "-" if minutes < 0 else "+"
    return f"{moment.isoformat()}{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


timestamps = st.one_of(
    # Near datetime.min/max an offset pushes the time out of range once moved to UTC.
    st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "0001-01-01"]),
    st.datetimes().map(datetime.isoformat),
    st.builds(_with_offset, st.datetimes(), st.integers(-14 * 60, 14 * 60)),
    st.integers(-(10**20), 10**20).map(str),
)
# Mostly valid values: one invalid parameter makes FastAPI answer 422 before our code runs,
# so deep paths (store calls, time conversion) are only reached when the rest is valid.
VALID = {
    "search": st.one_of(st.sampled_from(["pc", "accounting", "192.0.2.", str(SPECIAL_CMID)]), text),
    "sort": st.sampled_from(SORT_KEYS),
    "order": st.sampled_from(["asc", "desc"]),
    "limit": st.integers(1, 500).map(str),
    "since": timestamps,
    "until": timestamps,
    "result": st.sampled_from(["activated", "refused"]),
    "node": st.one_of(st.sampled_from([NODE, "node-b"]), text),
    "cursor": st.one_of(EDGES, text),
    "unknown": text,
}


def param_value(key: str) -> st.SearchStrategy[str]:
    invalid = st.one_of(EDGES, text, st.integers(-(10**20), 10**20).map(str))
    return st.sampled_from([True, True, True, False]).flatmap(
        lambda ok: VALID[key] if ok else invalid
    )


@pytest.mark.parametrize("path", list(ROUTE_KEYS))
@settings(max_examples=50, deadline=None)
@given(data=st.data())
async def test_fuzzed_queries_never_500(
    api: httpx.AsyncClient, path: str, data: st.DataObject
) -> None:
    keys = [*ROUTE_KEYS[path], "unknown"]
    strategy = st.fixed_dictionaries({}, optional={k: param_value(k) for k in keys})
    params = data.draw(strategy, label="params")
    response = await api.get(path, params=params)
    assert response.status_code < 500, (path, params, response.text)
    if response.status_code >= 400:
        assert response.json()["detail"]


@settings(max_examples=50, deadline=None)
@given(cmid=text)
async def test_fuzzed_cmids_never_500(api: httpx.AsyncClient, cmid: str) -> None:
    response = await api.get("/api/clients/" + quote(cmid, safe=""))
    # "" and "/"-like inputs hit /api/clients/ itself, which redirects to /api/clients.
    assert response.status_code in {200, 307, 404, 422}


# ---------------------------------------------------------------- ops endpoints and headers


async def test_healthz_and_metrics_are_public(anon: httpx.AsyncClient) -> None:
    health = await anon.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    metrics = await anon.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"


async def test_metrics_serve_the_given_registry(store: Store) -> None:
    registry = prometheus_client.CollectorRegistry()
    counter = prometheus_client.Counter("kmsgate_test_requests", "Test counter.", registry=registry)
    counter.inc(3)
    async with client_for(make_app(store, registry=registry)) as client:
        text_body = (await client.get("/metrics")).text
    assert "# TYPE kmsgate_test_requests_total counter" in text_body
    assert "kmsgate_test_requests_total 3.0" in text_body


async def test_healthz_503_when_the_store_is_down(tmp_path: Path) -> None:
    # A PostgreSQL URL on a closed loopback port: nothing answers, so ping fails fast.
    down = await Store.open("postgresql://kmsgate:pw@127.0.0.1:9/kmsgate", upgrade=False)
    try:
        async with client_for(make_app(down)) as client:
            health = await client.get("/healthz")
            assert health.status_code == 503
            assert health.json()["status"] == "unavailable"
            # Logging in needs the user table: a clear 503, not a crash.
            login_page = await client.get("/login")
            response = await client.post(
                "/login",
                data={"username": ADMIN, "password": "x", "csrf_token": csrf_from(login_page.text)},
            )
            assert response.status_code == 503
            assert "database is unavailable" in response.text
            # With a signed session cookie every page needs the store: 503, never 500.
            codec = SessionCodec(SECRET, secure=False)
            fake = User(ADMIN, "$argon2id$x", is_admin=True, created=NOW, disabled=False)
            client.cookies.set(codec.session_cookie, codec.issue(fake, "some-session"))
            assert (await client.get("/")).status_code == 503
            assert (await client.get("/api/clients")).status_code == 503
            assert (await client.get("/no-such-page")).status_code == 404
    finally:
        await down.close()


@pytest.mark.parametrize(
    "path", ["/", "/api/stats", "/login", "/nothing", "/api/nothing", "/static/style.css"]
)
async def test_security_headers(api: httpx.AsyncClient, path: str) -> None:
    response = await api.get(path)
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "http" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    expected_cache = "public, max-age=3600" if path.startswith("/static/") else "no-store"
    assert response.headers["cache-control"] == expected_cache


async def test_static_files(anon: httpx.AsyncClient) -> None:
    css = await anon.get("/static/style.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert (await anon.get("/static/favicon.svg")).headers["content-type"] == "image/svg+xml"
    assert (await anon.get("/static/../app.py")).status_code == 404
    assert (await anon.get("/static/")).status_code == 404
