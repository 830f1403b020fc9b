"""Bounded load generator: many strict activations against one host, with latency statistics.

Bounded in count and in time: workers stop when `total` activations were attempted or the
time limit passed, whichever comes first; every network step carries the client timeout.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kmsgate.client.activation import KmsClient
from kmsgate.client.connection import ClientConnection
from kmsgate.client.errors import ConnectionClosedError, KmsConnectionError, KmsTimeoutError
from kmsgate.errors import KmsgateError
from kmsgate.protocol.errors import (
    ActivationError,
    ProtocolError,
    RpcFaultError,
    VerificationError,
)

__all__ = ["LoadResult", "LoadSettings", "error_key", "percentile", "run_load", "run_sync"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LoadSettings:
    """How much load: at most `total` activations, at most `duration_limit` seconds.

    `requests_per_connection` 1 means a fresh TCP connection per activation; N > 1 sends up
    to N requests per connection (the first NDR32, later ones NDR64 when negotiated).
    """

    total: int
    concurrency: int = 8
    duration_limit: float = 30.0
    requests_per_connection: int = 1

    def __post_init__(self) -> None:
        if self.total < 1:
            raise ValueError("total must be at least 1")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not 0 < self.duration_limit < math.inf:
            raise ValueError("duration limit must be a positive number of seconds")
        if self.requests_per_connection < 1:
            raise ValueError("requests per connection must be at least 1")


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(slots=True)
class LoadResult:
    """Counts, error histogram and latencies (seconds, connect → verified answer)."""

    settings: LoadSettings
    attempted: int = 0
    succeeded: int = 0
    elapsed: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    connections: int = 0
    stopped_by_time: bool = False

    @property
    def failed(self) -> int:
        return self.attempted - self.succeeded

    @property
    def activations_per_second(self) -> float:
        return self.succeeded / self.elapsed if self.elapsed > 0 else 0.0

    def latency_ms(self, fraction: float) -> float:
        """A latency percentile in milliseconds."""
        return percentile(sorted(self.latencies), fraction) * 1000

    def merge(self, other: LoadResult) -> None:
        """Add another run's counts (e.g. from a parallel client process)."""
        self.attempted += other.attempted
        self.succeeded += other.succeeded
        self.elapsed = max(self.elapsed, other.elapsed)
        self.errors.update(other.errors)
        self.latencies.extend(other.latencies)
        self.connections += other.connections
        self.stopped_by_time = self.stopped_by_time or other.stopped_by_time

    def summary(self) -> dict[str, Any]:
        """JSON-friendly figures."""
        ordered = sorted(self.latencies)
        return {
            "attempted": self.attempted,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "errors": dict(sorted(self.errors.items())),
            "connections": self.connections,
            "elapsed_s": round(self.elapsed, 4),
            "stopped_by_time": self.stopped_by_time,
            "activations_per_s": round(self.activations_per_second, 1),
            "latency_ms": {
                "p50": round(percentile(ordered, 0.50) * 1000, 3),
                "p90": round(percentile(ordered, 0.90) * 1000, 3),
                "p99": round(percentile(ordered, 0.99) * 1000, 3),
                "max": round((ordered[-1] if ordered else 0.0) * 1000, 3),
            },
            "concurrency": self.settings.concurrency,
            "requests_per_connection": self.settings.requests_per_connection,
        }


def error_key(exc: BaseException) -> str:
    """A short stable label to count failures by."""
    if isinstance(exc, VerificationError):
        return f"check {exc.check}"
    if isinstance(exc, RpcFaultError):
        return f"rpc fault 0x{exc.status:08X}"
    if isinstance(exc, ActivationError):
        return f"hresult 0x{exc.hresult:08X}"
    if isinstance(exc, KmsTimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionClosedError):
        return "connection closed"
    if isinstance(exc, KmsConnectionError):
        return "connection failed"
    if isinstance(exc, ProtocolError):
        return "protocol error"
    return type(exc).__name__


class _Budget:
    """Shared count/time allowance of all workers (single event loop, no locking needed)."""

    def __init__(self, total: int, deadline: float) -> None:
        self.remaining = total
        self.deadline = deadline
        self.timed_out = False

    def take(self) -> bool:
        if self.remaining <= 0:
            return False
        if time.perf_counter() >= self.deadline:
            self.timed_out = True
            return False
        self.remaining -= 1
        return True


async def _worker(
    client: KmsClient, host: str, port: int, budget: _Budget, result: LoadResult
) -> None:
    per_connection = result.settings.requests_per_connection
    conn: ClientConnection | None = None
    sent_on_conn = 0
    try:
        while budget.take():
            result.attempted += 1
            started = time.perf_counter()
            try:
                if conn is None:
                    conn = await client.connect(host, port)
                    result.connections += 1
                    sent_on_conn = 0
                used, _ = await client.activate_again_on(conn)
                if used is not conn:  # the host had closed after its previous answer
                    conn = used
                    result.connections += 1
                    sent_on_conn = 0
            except (KmsgateError, OSError) as exc:
                result.errors[error_key(exc)] += 1
                if conn is not None:
                    # After any failure the connection state is unknown: start over.
                    conn.abort()
                    conn = None
                continue
            # Latency from the start of this activation (including connect when it opened one).
            result.latencies.append(time.perf_counter() - started)
            result.succeeded += 1
            sent_on_conn += 1
            if sent_on_conn >= per_connection:
                await conn.close()
                conn = None
    finally:
        if conn is not None:
            conn.abort()


async def run_load(client: KmsClient, host: str, port: int, settings: LoadSettings) -> LoadResult:
    """Run the load and return counts and latencies; never exceeds the count or (much) time."""
    result = LoadResult(settings)
    started = time.perf_counter()
    budget = _Budget(settings.total, started + settings.duration_limit)
    workers = [
        asyncio.create_task(_worker(client, host, port, budget, result))
        for _ in range(min(settings.concurrency, settings.total))
    ]
    # Hard stop: an activation already started may take at most the client timeout (per
    # step); past that grace period the remaining workers are cancelled.
    grace = settings.duration_limit + 3 * client.timeout + 1.0
    _done, pending = await asyncio.wait(workers, timeout=grace)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
        result.errors["cancelled at the time limit"] += len(pending)
        result.stopped_by_time = True
    for task in workers:
        if not task.cancelled() and (exc := task.exception()) is not None:
            raise exc
    result.elapsed = time.perf_counter() - started
    result.stopped_by_time = result.stopped_by_time or budget.timed_out
    return result


def run_sync(coro: Coroutine[Any, Any, T], *, use_uvloop: bool = True) -> T:
    """Run a coroutine on uvloop when installed and wanted, else on the default loop."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)
