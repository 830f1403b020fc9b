"""The user portal in a real browser: uvicorn on loopback, Debian's Chromium via Playwright."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi import FastAPI

from tests.web.browser import ServerThread, chromium_browser, free_port, require_chromium
from tests.web.test_portal import (
    USER,
    USER_PASSWORD,
    make_gateway,
    make_portal_app,
    open_portal_store,
)

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
