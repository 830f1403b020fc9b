"""What /healthz makes of the recorder's state, and the writer's reports behind it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from kmsgate.catalog import default_catalog
from kmsgate.store.database import Store
from kmsgate.store.errors import StoreUnavailable
from kmsgate.web.app import create_app
from kmsgate.web.health import StoreHealth
from tests.store.test_writer import FakeStore, wait_for, writer_for
from tests.support.records import make_draft

T = 1_800_000_000.0


@dataclass
class Recorder:
    """The figures RecordWriter and WriterProcess report, set by hand."""

    written: int = 0
    depth: int = 0
    dropped: int = 0
    failures: int = 0
    last_error: tuple[float, str] | None = None
    failing_since: float | None = None


class Clock:
    def __init__(self) -> None:
        self.now = T

    def __call__(self) -> float:
        return self.now


def test_healthy_while_nothing_is_lost() -> None:
    recorder, clock = Recorder(written=10, depth=3), Clock()
    problems, figures = StoreHealth(recorder, clock=clock).report()
    assert problems == []
    assert figures == {
        "written": 10,
        "queued": 3,
        "dropped": 0,
        "failures": 0,
        "last_error": None,
        "failing_since": None,
    }


def test_a_drop_is_unhealthy_for_a_minute_after_it_is_seen() -> None:
    recorder, clock = Recorder(written=10), Clock()
    health = StoreHealth(recorder, clock=clock)
    assert health.report()[0] == []
    recorder.dropped = 2
    clock.now += 30
    assert health.report()[0] == ["records dropped within the last 60 s"]
    clock.now += 59
    assert health.report()[0] != []
    clock.now += 2
    assert health.report()[0] == []  # nothing more lost: healthy again
    recorder.dropped = 3
    assert health.report()[0] != []


def test_writes_failing_for_seconds_are_unhealthy_a_blip_is_not() -> None:
    recorder, clock = Recorder(), Clock()
    health = StoreHealth(recorder, clock=clock)
    recorder.failures, recorder.failing_since = 1, T
    recorder.last_error = (T, "OperationalError: database is locked")
    clock.now += 4
    assert health.report()[0] == []
    clock.now += 2
    problems, figures = health.report()
    assert problems == ["writes failing for 6 s"]
    assert figures["failing_since"] == "2027-01-15T08:00:00Z"
    assert figures["last_error"] == {
        "time": "2027-01-15T08:00:00Z",
        "message": "OperationalError: database is locked",
    }
    recorder.failing_since = None  # written again: the last error stays visible
    problems, figures = health.report()
    assert problems == [] and figures["last_error"] is not None


async def test_the_writer_reports_failures_and_reconnects_after_two() -> None:
    fake = FakeStore()
    wall = Clock()
    writer = writer_for(fake, wall_clock=wall)
    await writer.start()
    try:
        fake.fail_with = StoreUnavailable("attempt to write a readonly database")
        writer.submit(make_draft())
        await wait_for(lambda: writer.failures >= 4)
        assert writer.failing_since == T
        assert writer.last_error == (T, "attempt to write a readonly database")
        # Fresh connections for every attempt after the second failure in a row.
        assert fake.reconnects >= writer.failures - 2 >= 2
        fake.fail_with = None
        await wait_for(lambda: writer.written == 1)
        assert writer.failing_since is None and writer.last_error is not None
    finally:
        await writer.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(f"sqlite:///{tmp_path}/kmsgate.db")
    try:
        yield opened
    finally:
        await opened.close()


async def get_health(store: Store, health: StoreHealth | None) -> httpx.Response:
    app = create_app(
        store,
        catalog=default_catalog(),
        metrics_registry=None,
        secret_key=b"k" * 32,
        secure_cookies=False,
        node_name="n",
        store_health=health,
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://kms.test") as client:
        return await client.get("/healthz")


async def test_healthz_answers_503_with_the_figures_while_records_are_lost(store: Store) -> None:
    recorder, clock = Recorder(written=5, depth=7, failures=3), Clock()
    recorder.last_error, recorder.failing_since = (T + 8, "disk I/O error"), T
    clock.now += 9
    response = await get_health(store, StoreHealth(recorder, clock=clock))
    body: dict[str, Any] = response.json()
    assert response.status_code == 503
    assert body["status"] == "losing records" and body["detail"] == "writes failing for 9 s"
    assert body["store"]["queued"] == 7 and body["store"]["last_error"]["message"] == (
        "disk I/O error"
    )
    recorder.failing_since = None
    response = await get_health(store, StoreHealth(recorder, clock=clock))
    assert response.status_code == 200 and response.json()["status"] == "ok"


async def test_healthz_without_a_recorder_checks_the_database_only(store: Store) -> None:
    response = await get_health(store, None)
    assert response.status_code == 200 and response.json() == {"status": "ok"}
