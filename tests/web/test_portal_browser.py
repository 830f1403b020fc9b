"""The user portal in a real browser: uvicorn on loopback, Debian's Chromium via Playwright."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI

from kmsgate.auth.passwords import hash_password
from kmsgate.store.audit import AuditEvent
from kmsgate.store.gateway import GatewayStore
from tests.ops.test_first_hour import KMSGATE, clean_env, serving
from tests.support.browser import (
    ADMIN,
    ADMIN_PASSWORD,
    FAST_HASHER,
    NODE,
    NOW,
    SPECIAL_CMID,
    ServerThread,
    chromium_browser,
    open_store,
    require_chromium,
)
from tests.support.kms import activate_once
from tests.support.ports import free_port
from tests.web.test_portal import (
    USER,
    USER_PASSWORD,
    make_gateway,
    make_portal_app,
    open_portal_store,
)

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TIMEOUT_MS = 10_000


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    """uvicorn serving a gateway-mode app (real clock) over a fresh store."""
    require_chromium()

    async def factory() -> tuple[FastAPI, Callable[[], Awaitable[None]]]:
        store = await open_portal_store(tmp_path)
        gateway = make_gateway(store, quota_week=5, clock=lambda: datetime.now(UTC))

        async def cleanup() -> None:
            await gateway.close()
            await store.close()

        return make_portal_app(store, gateway), cleanup

    thread = ServerThread(factory, free_port())
    thread.start()
    yield thread
    thread.stop()
    assert not thread.thread.is_alive(), "uvicorn did not stop"


def test_portal_login_in_chromium(server: ServerThread) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    statuses: list[tuple[int, str]] = []
    with chromium_browser() as browser:
        context = browser.new_context(viewport={"width": 1100, "height": 900}, base_url=server.url)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        # CSP violations and broken assets show up as console errors or failed requests.
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on(
            "requestfailed",
            lambda r: (
                problems.append(f"{r.url} {r.failure}") if r.failure != "net::ERR_ABORTED" else None
            ),
        )
        page.on("response", lambda r: statuses.append((r.status, r.url)))

        page.goto("/")
        assert page.get_by_role("heading", level=1).inner_text() == "Activate Windows or Office"
        assert "127.0.0.1" in page.locator("section.portal p").first.inner_text()
        assert page.locator("nav").count() == 0

        page.get_by_label("User name").fill(USER)
        page.get_by_label("Password").fill("not the password")
        page.get_by_role("button", name="Log in and activate").click()
        alert = page.get_by_role("alert")
        assert alert.inner_text() == "Wrong user name or password."
        assert page.get_by_label("User name").input_value() == USER
        assert page.get_by_label("Password").input_value() == ""

        page.get_by_label("Password").fill(USER_PASSWORD)
        page.get_by_role("button", name="Log in and activate").click()
        page.get_by_role("heading", name="Activate now").wait_for()
        countdown = page.get_by_role("status").inner_text()
        assert countdown == "Activate within 300 seconds from 127.0.0.1, once."
        body = page.locator("main").inner_text()
        assert re.search(r"The window closes at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", body)
        assert "This week\n0 of 5 used" in body or "This week 0 of 5 used" in body
        assert "slmgr /skms 127.0.0.1:1688" in body
        # The SVG countdown bar shrinks without any script (SMIL, allowed by the CSP).
        bar = "svg.timer rect.left"
        start = page.eval_on_selector(bar, "e => e.width.animVal.value")
        time.sleep(1.2)
        later = page.eval_on_selector(bar, "e => e.width.animVal.value")
        assert 0 < later < start <= 100
        page.screenshot(path=str(ARTIFACTS / "portal.png"), full_page=True)
        context.close()
    # Chromium reports the wrong password's 401 on the console too; it is checked below.
    assert [p for p in problems if "status of 401" not in p] == []
    assert [s for s in statuses if s[0] >= 400] == [(401, f"{server.url}/")]
    assert (ARTIFACTS / "portal.png").stat().st_size > 10_000


# ---------------------------------------------------------------- the KMS address on the portal


def portal_login_in_chromium(base_url: str, user: str, password: str, shot: str) -> str:
    """Log in on the portal of a real server with Chromium; the result page's text."""
    with chromium_browser() as browser:
        context = browser.new_context(viewport={"width": 1100, "height": 900}, base_url=base_url)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto("/")
        page.get_by_label("User name").fill(user)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Log in and activate").click()
        page.get_by_role("heading", name="Activate now").wait_for()
        text: str = page.locator("main").inner_text()
        page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
        context.close()
    return text


def add_portal_user(data: Path, name: str, password: str) -> None:
    made = subprocess.run(
        [str(KMSGATE), "users", "add", name, "--password-stdin", "--data-dir", str(data)],
        input=f"{password}\n", env=clean_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr


def test_portal_shows_the_real_kms_port_and_it_activates(tmp_path: Path) -> None:
    require_chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    data = tmp_path / "data"
    add_portal_user(data, USER, USER_PASSWORD)
    with serving(data, tmp_path / "serve.log", "--gateway") as (kms_port, base):
        assert kms_port != 1688
        text = portal_login_in_chromium(base, USER, USER_PASSWORD, "portal-port.png")
        # The browser reached the portal as 127.0.0.1; the KMS listener is on kms_port.
        shown = re.search(r"slmgr /skms 127\.0\.0\.1:(\d+)", text)
        assert shown, text
        assert "cscript ospp.vbs /sethst:127.0.0.1" in text
        assert f"cscript ospp.vbs /setprt:{kms_port}" in text
        # What the page says works: the window opened by this login serves that port.
        result = asyncio.run(activate_once(int(shown[1])))
        assert result.ok


def test_portal_shows_the_public_address(tmp_path: Path) -> None:
    require_chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    data = tmp_path / "data"
    add_portal_user(data, USER, USER_PASSWORD)
    public = ("--public-address", "kms.example.test:11688")
    with serving(data, tmp_path / "serve.log", "--gateway", *public) as (kms_port, base):
        text = portal_login_in_chromium(base, USER, USER_PASSWORD, "portal-public.png")
    assert "slmgr /skms kms.example.test:11688" in text
    assert "cscript ospp.vbs /sethst:kms.example.test" in text
    assert "cscript ospp.vbs /setprt:11688" in text
    assert f":{kms_port}" not in text and "127.0.0.1:" not in text


def test_a_bad_public_address_is_refused_before_anything_starts(tmp_path: Path) -> None:
    for value, message in (
        ("http://kms.example.test", "not a URL"),
        ("kms.example.test:0", "invalid port"),
        ("2001:db8::1", "as [ADDR] or [ADDR]:PORT"),
    ):
        bad = subprocess.run(
            [str(KMSGATE), "serve", "--public-address", value, "--data-dir", str(tmp_path)],
            env=clean_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert bad.returncode == 2, bad.stderr
        assert "public_address" in bad.stderr and message in bad.stderr, bad.stderr


# ---------------------------------------------------------------- phone layout

PHONE = {"width": 390, "height": 844}
# Every cell fits its box, the document never scrolls sideways, stacked cells show their label.
LAYOUT_PROBLEMS = """() => {
  const problems = [];
  const text = (el) => el.textContent.trim().slice(0, 40);
  // Headers of stacked tables and captions are hidden visually (read by screen readers only).
  const hidden = (el) => el.closest('table.stack:not(.sortable) thead, .visually-hidden');
  const doc = document.documentElement;
  if (doc.scrollWidth > 390) problems.push(`document is ${doc.scrollWidth} px wide`);
  for (const cell of document.querySelectorAll('td, th')) {
    if (hidden(cell) || getComputedStyle(cell).display === 'none') continue;
    if (cell.scrollWidth > cell.clientWidth)
      problems.push(`cell overflows (${cell.scrollWidth} > ${cell.clientWidth}): ${text(cell)}`);
    if (cell.dataset.label && cell.closest('table.stack')) {
      const label = getComputedStyle(cell, '::before').content;
      if (label !== JSON.stringify(cell.dataset.label))
        problems.push(`cell without its label ${cell.dataset.label}: ${label}`);
    }
  }
  for (const el of document.querySelectorAll('main *, header *')) {
    const box = el.getBoundingClientRect();
    if (box.width && box.right > 390.5 && !hidden(el) && !el.closest('svg'))
      problems.push(`${el.tagName}.${el.className} ends at ${box.right}: ${text(el)}`);
  }
  return problems;
}"""


@pytest.fixture
def busy_gateway_server(tmp_path: Path) -> Iterator[ServerThread]:
    """A gateway-mode app over a week of traffic and an audit trail with long values."""
    require_chromium()

    async def factory() -> tuple[FastAPI, Callable[[], Awaitable[None]]]:
        store = await open_store(tmp_path, busy=True)
        await store.add_user(USER, hash_password(USER_PASSWORD, hasher=FAST_HASHER))
        events = [
            AuditEvent(
                time=NOW - timedelta(minutes=i), kind=kind, node=NODE,
                username="student-with-a-rather-long-account-name" if i % 2 else None,
                address=f"2001:db8:1234:5678:9abc:def0:1234:{i:04x}",
                detail="no open activation window for this address at this time",
            )
            for i in range(12)
            for kind in ("connection_refused", "login_failed")
        ]  # fmt: skip
        await GatewayStore(store).add_audit(events)
        gateway = make_gateway(store, quota_week=5, clock=lambda: datetime.now(UTC))

        async def cleanup() -> None:
            await gateway.close()
            await store.close()

        return make_portal_app(store, gateway), cleanup

    thread = ServerThread(factory, free_port())
    thread.start()
    yield thread
    thread.stop()
    assert not thread.thread.is_alive(), "uvicorn did not stop"


def test_phone_layout_has_no_sideways_overflow(busy_gateway_server: ServerThread) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    problems: dict[str, list[str]] = {}
    with chromium_browser() as browser:
        context = browser.new_context(viewport=PHONE, base_url=busy_gateway_server.url)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto("/")
        problems["portal"] = page.evaluate(LAYOUT_PROBLEMS)
        page.get_by_label("User name").fill(USER)
        page.get_by_label("Password").fill(USER_PASSWORD)
        page.get_by_role("button", name="Log in and activate").click()
        page.get_by_role("heading", name="Activate now").wait_for()
        problems["portal result"] = page.evaluate(LAYOUT_PROBLEMS)
        page.screenshot(path=str(ARTIFACTS / "phone-portal-result.png"), full_page=True)

        page.goto("/login")
        page.get_by_label("User name").fill(ADMIN)
        page.get_by_label("Password").fill(ADMIN_PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url("**/dashboard")
        pages = {
            "overview": "/dashboard",
            "clients": "/clients",
            "requests": "/activations",
            "audit": "/audit",
            "products": "/products",
            "client": f"/clients/{SPECIAL_CMID}",
            "api": "/docs",
        }
        for name, url in pages.items():
            page.goto(url)
            problems[name] = page.evaluate(LAYOUT_PROBLEMS)
            page.screenshot(path=str(ARTIFACTS / f"phone-{name}.png"), full_page=True)

        page.goto("/dashboard")
        # Product bars: each label readable in full and each bar given the card's width.
        card = page.locator("ul.hbars").bounding_box()
        assert card is not None
        for row in page.locator("ul.hbars li").all():
            label = row.locator(".hbar-label")
            assert label.evaluate("e => e.scrollWidth <= e.clientWidth"), label.inner_text()
            bar = row.locator("svg.hbar").bounding_box()
            assert bar is not None and bar["width"] > 0.9 * card["width"]
        # Stacked requests: one block per row, cells under each other with their labels.
        first = page.locator("table.stack tbody tr").first
        assert first.evaluate("e => getComputedStyle(e).display") == "block"
        assert first.locator("td").count() == 9
        # The sort links of the client list stay reachable.
        page.goto("/clients")
        assert page.get_by_role("link", name="Machine").is_visible()
        context.close()
    assert {name: found for name, found in problems.items() if found} == {}


def test_wide_screens_keep_real_tables(busy_gateway_server: ServerThread) -> None:
    with chromium_browser() as browser:
        context = browser.new_context(
            viewport={"width": 1366, "height": 900}, base_url=busy_gateway_server.url
        )
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto("/login")
        page.get_by_label("User name").fill(ADMIN)
        page.get_by_label("Password").fill(ADMIN_PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url("**/dashboard")
        page.goto("/clients")
        cell = page.locator("table.stack tbody td").first
        assert cell.evaluate("e => getComputedStyle(e).display") == "table-cell"
        assert cell.evaluate("e => getComputedStyle(e, '::before').content") == "none"
        assert page.locator("table.stack thead th").first.is_visible()
        context.close()
