"""HTML pages rendered from a real seeded SQLite store."""

from __future__ import annotations

import contextlib
import html
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from kmsgate import __version__
from kmsgate.auth.passwords import hash_password
from kmsgate.catalog import default_catalog
from kmsgate.config.addresses import parse_public_address
from kmsgate.store.audit import AuditEvent
from kmsgate.store.database import Store
from kmsgate.store.gateway import GatewayStore
from kmsgate.web.charts import hour_chart, nice_ceiling, product_bars
from kmsgate.web.portal_login import KmsAddress
from kmsgate.web.render import url_with
from tests.support.browser import (
    ADMIN,
    ADMIN_PASSWORD,
    FAST_HASHER,
    NODE,
    NOW,
    SPECIAL_CMID,
    SPECIAL_NAME,
    XSS_NAME,
    client_for,
    login,
    make_app,
    open_store,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.integration]
HREF_RE = re.compile(r'(?:href|src|action)="([^"]*)"')


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def web(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    """A logged-in client of one seeded app, shared by the module (pages are read-only)."""
    store = await open_store(tmp_path_factory.mktemp("pages"))
    async with client_for(make_app(store)) as client:
        assert (await login(client)).status_code == 303
        yield client
    await store.close()


async def page(client: httpx.AsyncClient, url: str, status: int = 200) -> str:
    response = await client.get(url)
    assert response.status_code == status, (url, response.text[:500])
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    return response.text


def links(text: str) -> list[str]:
    return [html.unescape(u) for u in HREF_RE.findall(text)]


def rows(text: str) -> list[str]:
    body = text.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr>.*?</tr>", body, flags=re.S)


async def test_overview(web: httpx.AsyncClient) -> None:
    text = await page(web, "/")
    assert "<h1>Overview</h1>" in text
    assert NODE in text
    assert SPECIAL_NAME in text  # latest requests table
    # Counter cards: 30 clients, 33 requests, 2 refusals (thin-space thousands separators).
    cards = re.findall(r'<span class="value[^"]*">([^<]+)<', text)
    assert cards[:3] == ["30", "33", "2"]
    assert 'datetime="2024-05-06T12:25:00Z"' in text
    assert text.count('<rect class="bar"') > 10
    assert 'role="img"' in text and '<title id="chart-title">' in text
    for family in ("Windows", "Office 2019", "Windows Server"):
        assert f'<span class="hbar-label">{family}</span>' in text
    assert "KMS v4" in text and "KMS v6" in text
    assert 'aria-current="page">Overview' in text
    assert f"kmsgate {__version__}" in text


async def test_clients_page_lists_searches_and_sorts(web: httpx.AsyncClient) -> None:
    text = await page(web, "/clients")
    assert SPECIAL_NAME in text and "pc-000.corp.example" in text
    assert 'aria-sort="descending"' in text  # last_seen desc by default
    assert len(rows(text)) == 30

    found = await page(web, "/clients?search=accounting")
    assert len(rows(found)) == 1 and SPECIAL_NAME in rows(found)[0]
    assert f'href="/clients/{SPECIAL_CMID}"' in found
    assert 'value="accounting"' in found

    none = await page(web, "/clients?search=zzz-nothing")
    assert "No clients match" in none

    by_name = await page(web, "/clients?sort=machine_name&order=asc")
    names = re.findall(
        r'<td data-label="Machine"><a href="/clients/[^"]+">([^<]+)</a></td>', by_name
    )
    assert names == sorted(names) and len(names) == 30
    assert 'aria-sort="ascending"' in by_name
    # Clicking the current column flips the order; other columns start in their natural one.
    hrefs = links(by_name)
    assert "/clients?sort=machine_name&order=desc" in hrefs
    assert "/clients?sort=request_count&order=desc" in hrefs
    assert "/clients?sort=sku_name&order=asc" in hrefs


def rel_link(text: str, rel: str) -> str | None:
    found = re.findall(rf'href="([^"]*)" rel="{rel}"', text)
    return html.unescape(found[0]) if found else None


async def test_clients_paging_links(web: httpx.AsyncClient) -> None:
    first = await page(web, "/clients?sort=machine_name&order=asc&limit=12")
    assert rel_link(first, "prev") is None
    next_url = rel_link(first, "next")
    assert next_url and "sort=machine_name" in next_url and "limit=12" in next_url
    second = await page(web, next_url)
    assert len(rows(second)) == 12
    assert rel_link(second, "prev") and rel_link(second, "next")
    third = await page(web, rel_link(second, "next") or "")
    assert len(rows(third)) == 6 and rel_link(third, "next") is None
    assert rows(await page(web, rel_link(third, "prev") or "")) == rows(second)
    back = await page(web, rel_link(second, "prev") or "")
    assert rows(back) == rows(first)


async def test_client_history_page(web: httpx.AsyncClient) -> None:
    text = await page(web, f"/clients/{SPECIAL_CMID}")
    assert f"<h1>{SPECIAL_NAME}</h1>" in text
    assert str(SPECIAL_CMID) in text
    assert "Office Professional Plus 2019" in text
    assert "192.0.2.42" in text
    assert len(rows(text)) == 3
    assert text.count('class="badge ok"') == 3
    paged = await page(web, f"/clients/{SPECIAL_CMID}?limit=2")
    assert len(rows(paged)) == 2 and 'rel="next"' in paged


async def test_activations_page_filters(web: httpx.AsyncClient) -> None:
    text = await page(web, "/activations?result=refused")
    assert len(rows(text)) == 2
    assert "0xC004F042" in text and "broken-request" in text
    assert '<option value="refused" selected>' in text
    since = (NOW - timedelta(hours=5)).strftime("%Y-%m-%dT%H:%M")
    window = await page(web, f"/activations?since={since}")
    assert 'value="' + since + '"' in window
    assert 0 < len(rows(window)) < 10


async def test_products_page_is_the_catalogue(web: httpx.AsyncClient) -> None:
    everything = await page(web, "/products")
    total = len(default_catalog().skus)
    assert len(rows(everything)) == total
    found = await page(web, "/products?search=server+2019+datacenter")
    names = re.findall(r'<td data-label="Name">([^<]+)<div', found)
    assert "Windows Server 2019 Datacenter" in names
    assert all("Server 2019 Datacenter" in n for n in names)
    assert f"of {total} SKUs" in found
    by_gvlk = await page(web, "/products?search=WMDGN-G9PQG-XVVXX-R3X43-63DFG")
    assert "Windows Server 2019 Datacenter" in by_gvlk
    assert "No product matches" in await page(web, "/products?search=no-such-product")


async def test_machine_names_are_escaped(web: httpx.AsyncClient) -> None:
    for url in (
        "/clients",
        "/activations?limit=500",
        f"/clients/{uuid.UUID(int=0xE71)}",
        "/clients?search=%3Cscript",
    ):
        text = await page(web, url)
        assert XSS_NAME not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    search = await page(web, "/clients?search=%22%3E%3Cimg+src%3Dx%3E")
    assert '"><img src=x>' not in search


async def test_api_docs_page_works_offline(web: httpx.AsyncClient) -> None:
    text = await page(web, "/docs")
    for path in ("/api/clients", "/api/clients/{cmid}", "/api/activations", "/api/stats"):
        assert f"<code>{path}</code>" in text
    assert "max length 200" in text and "≤ 500" in text


@pytest.mark.parametrize(
    "url",
    [
        "/",
        "/clients",
        f"/clients/{SPECIAL_CMID}",
        "/activations",
        "/products",
        "/docs",
        "/no-such-page",
    ],
)
async def test_pages_load_nothing_from_other_hosts(web: httpx.AsyncClient, url: str) -> None:
    text = (await web.get(url)).text
    assert_local_only(text)


def assert_local_only(text: str) -> None:
    for target in links(text):
        assert target.startswith(("/", "#")), target
    assert "<script" not in text and " style=" not in text  # the CSP forbids inline code


@pytest.mark.parametrize(
    ("url", "status", "message"),
    [
        (f"/clients/{uuid.UUID(int=99)}", 404, "No client with CMID"),
        ("/clients/not-a-cmid", 422, "cmid: Input should be a valid UUID"),
        ("/clients?limit=0", 422, "limit: Input should be greater than or equal to 1"),
        ("/clients?limit=abc", 422, "limit: Input should be a valid integer"),
        ("/clients?sort=evil", 422, "sort: Input should be"),
        ("/clients?search=" + "x" * 201, 422, "search: String should have at most 200 characters"),
        ("/clients?cursor=garbage", 400, "Invalid paging cursor"),
        (
            "/activations?since=2024-05-02&until=2024-05-01",
            400,
            "since must not be later than until",
        ),
        ("/no/such/page", 404, "There is no page at this address."),
        ("/products?search=%00", 422, "search: String should match pattern"),
    ],
)
async def test_bad_input_pages(web: httpx.AsyncClient, url: str, status: int, message: str) -> None:
    text = await page(web, url, status)
    assert message in html.unescape(text)
    assert f"({status})" in text
    assert 'href="/clients"' in text  # navigation is still there


async def test_anonymous_visitors_are_sent_to_login(tmp_path: Path) -> None:
    store = await open_store(tmp_path, seed=False)
    async with client_for(make_app(store)) as client:
        response = await client.get("/clients?search=a b")
        assert response.status_code == 303
        assert response.headers["location"] == "/login?next=%2Fclients%3Fsearch%3Da%2520b"
        form = await page(client, "/login?next=/clients")
        assert 'name="next" value="/clients"' in form
        assert "Log out" not in form and 'href="/clients"' not in form
        assert 'autocomplete="current-password"' in form
        assert_local_only(form)
        assert f"kmsgate {__version__}" not in form  # no version for anonymous visitors
        response = await login(client, next_url="/clients?search=a%20b")
        assert response.headers["location"] == "/clients?search=a%20b"
        # A signed-in admin visiting /login goes straight on.
        again = await client.get("/login?next=/products")
        assert again.status_code == 303 and again.headers["location"] == "/products"
        assert "No clients yet." in await page(client, "/clients")
        overview = await page(client, "/")
        assert "No requests in the last 7 days." in overview
    await store.close()


async def test_hour_chart_geometry() -> None:
    start = NOW.replace(minute=0) - timedelta(hours=167)
    per_hour = [(start + timedelta(hours=i), 0) for i in range(168)]
    per_hour[10] = (per_hour[10][0], 7)
    per_hour[-1] = (per_hour[-1][0], 3)
    chart = hour_chart(per_hour)
    assert len(chart.bars) == 2
    assert chart.total == 10 and chart.peak == 7
    assert [t.label for t in chart.y_ticks] == ["0", "5", "10"]  # 7 rounds up to 10
    tall, short = chart.bars
    assert tall.height == pytest.approx(chart.plot_height * 0.7)
    assert tall.y + tall.height == pytest.approx(chart.top + chart.plot_height)
    assert short.x > tall.x
    assert "7 requests" in tall.label
    assert len(chart.x_ticks) == 7  # one per midnight
    assert all(chart.left <= t.pos <= chart.left + chart.plot_width for t in chart.x_ticks)
    empty = hour_chart([])
    assert empty.bars == [] and empty.peak == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 1), (1, 1), (3, 5), (7, 10), (10, 10), (11, 20), (250, 500), (999, 1000)],
)
async def testnice_ceiling(value: int, expected: int) -> None:
    assert nice_ceiling(value) == expected


async def test_product_bars_and_urls() -> None:
    assert product_bars([("a", 10), ("b", 5)]) == [("a", 10, 100.0), ("b", 5, 50.0)]
    assert product_bars([]) == []
    assert (
        url_with("/clients", {"search": "a&b", "sort": None, "cursor": ""})
        == "/clients?search=a%26b"
    )


# ---------------------------------------------------------------- first admin, refusals tile

FIRST_ADMIN_HINT = "No administrator account exists yet."


async def test_login_page_tells_how_to_create_the_first_admin(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite:///{tmp_path / 'kmsgate.db'}")  # no account at all
    try:
        async with client_for(make_app(store)) as client:
            empty = await page(client, "/login")
            assert FIRST_ADMIN_HINT in empty
            assert "<code>kmsgate users add NAME --admin</code>" in empty
            assert "Administrators of" not in empty and f"{NODE}</strong> only" not in empty
            assert 'name="csrf_token"' in empty  # the form stays for a freshly made account
            # A failed attempt (nobody can log in yet) keeps the hint next to the error.
            failed = await login(client, "someone", "whatever-password")
            assert failed.status_code == 401 and FIRST_ADMIN_HINT in failed.text
            # Portal users are no administrators: the hint stays.
            await store.add_user("student", hash_password("student-pass-1", hasher=FAST_HASHER))
            assert FIRST_ADMIN_HINT in await page(client, "/login")
            await store.add_user(
                ADMIN, hash_password(ADMIN_PASSWORD, hasher=FAST_HASHER), is_admin=True
            )
            ready = await page(client, "/login")
            assert FIRST_ADMIN_HINT not in ready and "users add" not in ready
            assert "Log in with a kmsgate administrator account." in ready
            assert "Administrators of" not in ready
            # A disabled administrator cannot log in: the hint comes back.
            with contextlib.closing(sqlite3.connect(tmp_path / "kmsgate.db")) as db, db:
                db.execute("UPDATE users SET disabled = 1 WHERE name = ?", (ADMIN,))
            assert FIRST_ADMIN_HINT in await page(client, "/login")
    finally:
        await store.close()


async def test_refusals_tile_counts_gateway_refusals_too(tmp_path: Path) -> None:
    store = await open_store(tmp_path)  # the seeded records hold 2 refused KMS requests
    audit = GatewayStore(store)
    refused = [
        AuditEvent(time=NOW - timedelta(minutes=i), kind="connection_refused", node=NODE,
                   address=f"198.51.100.{i}", detail="no open activation window")
        for i in range(1, 4)
    ]  # fmt: skip
    # Other gateway events are not refusals.
    others = [AuditEvent(time=NOW, kind=kind, node=NODE, address="192.0.2.1")
              for kind in ("login_failed", "window_expired", "window_granted")]  # fmt: skip
    await audit.add_audit([*refused, *others])
    try:
        async with client_for(make_app(store)) as client:
            assert (await login(client)).status_code == 303
            text = await page(client, "/")
        cards = re.findall(r'<span class="value[^"]*">([^<]+)<', text)
        assert cards[:3] == ["30", "33", "5"]
        tile = text.split('<span class="label">Refusals</span>', 1)[1].split("</div>", 1)[0]
        assert '<a href="/activations?result=refused">2 KMS</a>' in tile
        assert '<a href="/audit?kind=connection_refused">3 without a window</a>' in tile
    finally:
        await store.close()


# ---------------------------------------------------------------- the portal's KMS address


async def test_kms_address_commands() -> None:
    default = KmsAddress(port=11688)
    commands = default.commands("portal.example.edu")
    assert (commands.skms, commands.sethst, commands.setprt) == (
        "portal.example.edu:11688", "portal.example.edu", 11688,
    )  # fmt: skip
    # IPv6: slmgr wants brackets around the address; ospp.vbs takes the host and port apart.
    v6 = KmsAddress().commands("2001:db8::5")
    assert (v6.skms, v6.sethst, v6.setprt) == ("[2001:db8::5]:1688", "2001:db8::5", 1688)
    public = KmsAddress("kms.example.edu", 1688).commands("10.0.0.5")
    assert (public.skms, public.sethst) == ("kms.example.edu:1688", "kms.example.edu")
    assert KmsAddress("2001:db8::9", 1700).commands(None).skms == "[2001:db8::9]:1700"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("kms.example.edu", ("kms.example.edu", None)),
        ("kms.example.edu:11688", ("kms.example.edu", 11688)),
        ("203.0.113.5:1688", ("203.0.113.5", 1688)),
        ("[2001:db8::1]", ("2001:db8::1", None)),
        ("[2001:db8::1]:1688", ("2001:db8::1", 1688)),
        (" kms-1.example.edu. ", ("kms-1.example.edu.", None)),
    ],
)
async def test_public_address_forms(text: str, parsed: tuple[str, int | None]) -> None:
    assert parse_public_address(text) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is no host name"),
        ("https://kms.example.edu/", "not a URL"),
        ("kms.example.edu:", "invalid port"),
        ("kms.example.edu:65536", "invalid port"),
        ("2001:db8::1", "as [ADDR] or [ADDR]:PORT"),
        ("[kms.example.edu]:1688", "is no IPv6 address"),
        ("[2001:db8::1]1688", "must look like"),
        ("kms example", "is no host name"),
        ("-kms.example.edu", "is no host name"),
        ("kms..example.edu", "is no host name"),
    ],
)
async def test_bad_public_addresses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_public_address(text)
