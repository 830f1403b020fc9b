"""The dashboard in a real browser: uvicorn on loopback, Debian's Chromium via Playwright."""

from __future__ import annotations

import re
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from tests.support.browser import (
    ADMIN,
    ADMIN_PASSWORD,
    NODE,
    SPECIAL_CMID,
    SPECIAL_NAME,
    ServerThread,
    chromium_browser,
    make_app,
    open_store,
    require_chromium,
)
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TIMEOUT_MS = 10_000


def start_server(tmp_path: Path, *, busy: bool) -> ServerThread:
    """uvicorn on 127.0.0.1:<free port> serving a seeded store (opened on the server's loop)."""

    async def factory() -> tuple[FastAPI, Callable[[], Awaitable[None]]]:
        store = await open_store(tmp_path, busy=busy)
        return make_app(store), store.close

    thread = ServerThread(factory, free_port())
    thread.start()
    return thread


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    """A server with a week of traffic, for the browser."""
    require_chromium()  # fail or skip before starting anything
    thread = start_server(tmp_path, busy=True)
    yield thread
    thread.stop()
    assert not thread.thread.is_alive(), "uvicorn did not stop"


def raw_get(port: int, target: bytes) -> bytes:
    """Status line of a GET sent over a plain socket (httpx refuses such long URLs)."""
    request = b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n" not in data and len(data) < 4096:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0]


def test_real_server_refuses_oversized_request_lines(tmp_path: Path) -> None:
    thread = start_server(tmp_path, busy=False)
    try:
        assert raw_get(thread.port, b"/healthz") == b"HTTP/1.1 200 OK"
        for size in (9_000, 70_000):
            target = b"/api/clients?search=" + b"a" * size
            # Our middleware answers 414; the HTTP parser may refuse first with 400 when the
            # line arrives in pieces. Either way a clear refusal, never a 500.
            status = raw_get(thread.port, target)
            assert status.startswith((b"HTTP/1.1 414 ", b"HTTP/1.1 400 ")), status
    finally:
        thread.stop()
    assert not thread.thread.is_alive()


def test_login_search_and_history_in_chromium(server: ServerThread) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    with chromium_browser() as browser:
        context = browser.new_context(viewport={"width": 1366, "height": 900}, base_url=server.url)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        # CSP violations and broken assets show up as console errors or failed requests.
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))

        def on_failed(request: Any) -> None:
            # Navigating away cancels in-flight fetches (often the favicon): not a defect.
            if request.failure != "net::ERR_ABORTED":
                problems.append(f"failed: {request.url} {request.failure}")

        page.on("requestfailed", on_failed)

        def on_response(response: Any) -> None:
            if response.status >= 400:
                problems.append(f"{response.status}: {response.url}")

        page.on("response", on_response)

        page.goto("/clients")
        assert re.search(r"/login\?next=%2Fclients$", page.url)
        page.get_by_label("User name").fill(ADMIN)
        page.get_by_label("Password").fill(ADMIN_PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(f"{server.url}/clients")
        assert page.get_by_role("heading", level=1).inner_text().startswith("Clients")
        assert page.locator(".node").inner_text() == NODE
        assert page.get_by_role("link", name=SPECIAL_NAME).is_visible()

        page.get_by_label("Search clients").fill("accounting")
        page.get_by_role("button", name="Search").click()
        page.wait_for_url(re.compile(r".*/clients\?search=accounting$"))
        body_rows = page.locator("table.clients tbody tr")
        assert body_rows.count() == 1
        assert SPECIAL_NAME in body_rows.first.inner_text()

        page.get_by_role("link", name=SPECIAL_NAME).click()
        page.wait_for_url(f"{server.url}/clients/{SPECIAL_CMID}")
        assert page.get_by_role("heading", level=1).inner_text() == SPECIAL_NAME
        assert page.get_by_role("heading", name="History").is_visible()
        assert page.locator("table tbody tr").count() == 3
        page.screenshot(path=str(ARTIFACTS / "client.png"), full_page=True)

        page.get_by_role("link", name="Overview").click()
        page.wait_for_url(f"{server.url}/")
        chart = page.locator("svg.chart")
        assert chart.is_visible()
        box = chart.bounding_box()
        assert box is not None and box["width"] > 600
        assert page.locator("svg.chart rect.bar").count() > 10
        # The stylesheet applied (CSP allows it): the top bar is dark, not the default white.
        top_bg = page.eval_on_selector(".topbar", "e => getComputedStyle(e).backgroundColor")
        assert top_bg == "rgb(17, 24, 39)"
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        page.get_by_role("button", name="Log out").click()
        page.wait_for_url(f"{server.url}/login")
        page.goto("/")
        assert "/login?next=%2F" in page.url
        context.close()
    assert problems == []
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
