"""Shared helpers of the web tests: a seeded real store, the app, login, uvicorn and Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import prometheus_client
import pytest
import uvicorn
from argon2 import PasswordHasher
from fastapi import FastAPI

from kmsgate.access.throttle import LoginThrottle
from kmsgate.auth.passwords import hash_password
from kmsgate.catalog import default_catalog
from kmsgate.store.database import Store
from kmsgate.store.records import ActivationRecord
from kmsgate.web import create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Fixed "now" so counts, the 7-day chart and paging are deterministic.
NOW = datetime(2024, 5, 6, 12, 30, tzinfo=UTC)
SECRET = b"test-secret-key-of-32-bytes-long"
ADMIN, ADMIN_PASSWORD = "admin", "correct horse battery staple"
VIEWER, VIEWER_PASSWORD = "viewer", "not an admin at all"
# Cheap argon2 costs: real hashes and verification, without 0.2 s per login.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
NODE = "node-a"

SPECIAL_CMID = uuid.UUID("11111111-2222-4333-8444-555555555555")
SPECIAL_NAME = "ACCOUNTING-PC-42.corp.example"
XSS_NAME = "<script>alert(1)</script>"
N_CLIENTS = 27  # not a multiple of the page sizes the tests use

PRODUCTS = (
    ("Windows 10/11 Enterprise", "Windows"),
    ("Office Professional Plus 2019", "Office 2019"),
    ("Windows Server 2019 Datacenter", "Windows Server"),
    ("Office Standard 2019", "Office 2019"),
)


def _record(
    when: datetime,
    cmid: uuid.UUID | None,
    name: str,
    product: int,
    *,
    address: str,
    result: str = "activated",
    node: str = NODE,
    protocol: int = 6,
) -> ActivationRecord:
    catalog = default_catalog()
    sku = catalog.resolve_product(PRODUCTS[product][0])
    refused = result == "refused"
    return ActivationRecord(
        time=when,
        client_machine_id=cmid,
        machine_name=name,
        address=address,
        application_id=sku.application_id,
        sku_id=sku.id,
        sku_name=sku.name,
        kms_id=sku.kms_id,
        product_family=PRODUCTS[product][1],
        license_status=1 if not refused else 2,
        protocol=protocol,
        result=result,
        hresult=0xC004F042 if refused else 0,
        epid=None if refused else "06401-00206-551-000000-03-1033-17763.0000-0452024",
        node=node,
    )


def seed_records() -> list[ActivationRecord]:
    """N_CLIENTS ordinary clients, one special client with 3 requests, refusals, an XSS name."""
    records = []
    for i in range(N_CLIENTS):
        records.append(
            _record(
                NOW - timedelta(hours=3 * i + 1),
                uuid.UUID(int=0x1000 + i),
                f"pc-{i:03d}.corp.example",
                i % len(PRODUCTS),
                address=f"10.0.{i // 10}.{i % 10 + 1}",
                protocol=(4, 5, 6)[i % 3],
                node=NODE if i % 2 else "node-b",
            )
        )
    for k in range(3):
        records.append(
            _record(
                NOW - timedelta(days=2 - k, minutes=5),
                SPECIAL_CMID,
                SPECIAL_NAME,
                1,
                address="192.0.2.42",
            )
        )
    records.append(
        _record(
            NOW - timedelta(hours=30),
            None,
            "broken-request",
            0,
            address="198.51.100.9",
            result="refused",
        )
    )
    records.append(
        _record(
            NOW - timedelta(hours=31),
            uuid.UUID(int=0xBAD),
            "refused-pc",
            2,
            address="198.51.100.10",
            result="refused",
        )
    )
    records.append(
        _record(NOW - timedelta(hours=50), uuid.UUID(int=0xE71), XSS_NAME, 0, address="10.9.9.9")
    )
    return sorted(records, key=lambda r: r.time)


def busy_records(days: int = 6, fleet: int = 240) -> list[ActivationRecord]:
    """Deterministic office-hours traffic from a fleet, so the chart looks like a real week."""
    records = []
    start = NOW.replace(minute=0) - timedelta(days=days)
    for hour in range(days * 24):
        when = start + timedelta(hours=hour)
        weekday = when.weekday() < 5
        # Busy 07-18 UTC on weekdays, a trickle at night and at weekends.
        load = (9 if 7 <= when.hour <= 18 else 1) * (3 if weekday else 1)
        for k in range((hour * 7919) % 5 + load):
            n = (hour * 31 + k * 17) % fleet
            records.append(
                _record(
                    when + timedelta(minutes=(k * 13) % 60),
                    uuid.UUID(int=0x5000 + n),
                    f"ws-{n:04d}.branch.example",
                    n % len(PRODUCTS),
                    address=f"172.16.{n // 250}.{n % 250 + 1}",
                    protocol=(6, 6, 5, 4)[n % 4],
                    result="refused" if (hour + k) % 97 == 0 else "activated",
                )
            )
    return records


async def open_store(tmp_path: Path, *, seed: bool = True, busy: bool = False) -> Store:
    """A real SQLite store in tmp_path with the admin, a non-admin user and seeded requests."""
    store = await Store.open(f"sqlite:///{tmp_path / 'kmsgate.db'}")
    await store.add_user(ADMIN, hash_password(ADMIN_PASSWORD, hasher=FAST_HASHER), is_admin=True)
    await store.add_user(VIEWER, hash_password(VIEWER_PASSWORD, hasher=FAST_HASHER))
    if busy:
        await store.record_activations(busy_records())
    if seed:
        await store.record_activations(seed_records())
    return store


def make_app(
    store: Store,
    *,
    limiter: LoginThrottle | None = None,
    registry: prometheus_client.CollectorRegistry | None = None,
    secure_cookies: bool = False,
) -> FastAPI:
    """The dashboard over store with test settings (fixed clock, cheap hasher)."""
    return create_app(
        store,
        catalog=default_catalog(),
        metrics_registry=registry or prometheus_client.CollectorRegistry(),
        secret_key=SECRET,
        secure_cookies=secure_cookies,
        node_name=NODE,
        login_limiter=limiter,
        password_hasher=FAST_HASHER,
        clock=lambda: NOW,
    )


@contextlib.asynccontextmanager
async def client_for(
    app: FastAPI, base_url: str = "http://testserver"
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to app in-process (ASGI transport, no sockets)."""
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
        yield client


CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_from(html: str) -> str:
    """The CSRF token of the first form on a page."""
    match = CSRF_RE.search(html)
    assert match, "no csrf_token in page"
    return match.group(1)


async def login(
    client: httpx.AsyncClient,
    user: str = ADMIN,
    password: str = ADMIN_PASSWORD,
    next_url: str = "/",
) -> httpx.Response:
    """Fetch the login form and post it with its CSRF token; returns the POST response."""
    form = await client.get("/login", params={"next": next_url})
    assert form.status_code == 200
    return await client.post(
        "/login",
        data={
            "username": user,
            "password": password,
            "csrf_token": csrf_from(form.text),
            "next": next_url,
        },
    )


# ---------------------------------------------------------------- real server and browser


class ServerThread:
    """uvicorn serving an app on 127.0.0.1:<port> from a thread with its own event loop."""

    def __init__(self, app_factory: Any, port: int) -> None:
        """app_factory: async callable returning (app, cleanup coroutine function)."""
        self.app_factory = app_factory
        self.port = port
        self.server: uvicorn.Server | None = None
        self.thread = threading.Thread(target=self._run, name="uvicorn-test", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        app, cleanup = await self.app_factory()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        try:
            await self.server.serve()
        finally:
            await cleanup()

    def start(self, timeout: float = 10.0) -> None:
        """Start and wait (bounded) until uvicorn accepts connections."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn exited during startup (traceback above)")
            if self.server is not None and self.server.started:
                return
            time.sleep(0.02)
        raise TimeoutError("uvicorn did not start in time")

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to exit and join the thread (bounded)."""
        if self.server is not None:
            self.server.should_exit = True
        self.thread.join(timeout)

    @property
    def url(self) -> str:
        """Base URL of the running server."""
        return f"http://127.0.0.1:{self.port}"


def require_chromium() -> Path:
    """Debian's chromium; fails the test when missing unless KMSGATE_ALLOW_SKIP=1 skips it."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: apt-get install chromium"
        if os.environ.get("KMSGATE_ALLOW_SKIP") == "1":
            pytest.skip(message)
        pytest.fail(message)
    return CHROMIUM


@contextlib.contextmanager
def chromium_browser() -> Iterator[Any]:
    """A headless Chromium driven by Playwright (never downloads its own browsers)."""
    from playwright.sync_api import sync_playwright

    executable = require_chromium()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(executable), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()
