"""/healthz: 200 while the store answers and keeps every record, 503 while records are lost."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from fastapi.responses import JSONResponse

from kmsgate.store.database import Store
from kmsgate.store.errors import StoreError

log = logging.getLogger("kmsgate.web")

HEALTH_TIMEOUT = 3.0
# A drop seen by a health check keeps the node unhealthy this long: a monitor polling every
# 10–30 s sees it, and the node turns healthy again on its own once nothing more is lost.
DROP_WINDOW = 60.0
# Writes failing this long mean records pile up unwritten (and are dropped once the queue is
# full): short hiccups (a busy database, a failover) stay healthy.
FAILING_AFTER = 5.0


class RecorderState(Protocol):
    """What RecordWriter and WriterProcess both report."""

    @property
    def written(self) -> int: ...
    @property
    def depth(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def failures(self) -> int: ...
    @property
    def last_error(self) -> tuple[float, str] | None: ...
    @property
    def failing_since(self) -> float | None: ...


def _iso(unix: float | None) -> str | None:
    if unix is None:
        return None
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class StoreHealth:
    """The recorder's counters and whether it is losing records, as /healthz reports them."""

    def __init__(
        self,
        recorder: RecorderState,
        *,
        clock: Callable[[], float] = time.time,
        drop_window: float = DROP_WINDOW,
        failing_after: float = FAILING_AFTER,
    ) -> None:
        """`clock` gives Unix seconds, the recorder's own time base."""
        self._recorder = recorder
        self._clock = clock
        self._drop_window = drop_window
        self._failing_after = failing_after
        self._dropped_seen = 0
        self._drop_seen_at: float | None = None

    def report(self) -> tuple[list[str], dict[str, Any]]:
        """(why records are being lost, empty when they are not; the store's figures)."""
        now = self._clock()
        recorder = self._recorder
        dropped = recorder.dropped
        if dropped > self._dropped_seen:
            self._dropped_seen, self._drop_seen_at = dropped, now
        problems = []
        if self._drop_seen_at is not None and now - self._drop_seen_at < self._drop_window:
            problems.append(f"records dropped within the last {self._drop_window:.0f} s")
        since = recorder.failing_since
        if since is not None and now - since >= self._failing_after:
            problems.append(f"writes failing for {now - since:.0f} s")
        last = recorder.last_error
        figures = {
            "written": recorder.written,
            "queued": recorder.depth,
            "dropped": dropped,
            "failures": recorder.failures,
            "last_error": None if last is None else {"time": _iso(last[0]), "message": last[1]},
            "failing_since": _iso(since),
        }
        return problems, figures


async def health_response(store: Store, health: StoreHealth | None) -> JSONResponse:
    """503 when the database does not answer or records are being lost, else 200."""
    problems, figures = health.report() if health is not None else ([], None)
    body: dict[str, Any] = {"status": "ok"}
    try:
        await asyncio.wait_for(store.ping(), HEALTH_TIMEOUT)
    except (StoreError, TimeoutError) as exc:
        log.warning("health check: store unavailable: %s", exc or "timeout")
        body = {"status": "unavailable", "detail": "store unavailable"}
    else:
        if problems:
            body = {"status": "losing records", "detail": "; ".join(problems)}
    if figures is not None:
        body["store"] = figures
    return JSONResponse(body, 200 if body["status"] == "ok" else 503)
