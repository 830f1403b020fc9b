"""An answer a client received survives a SIGKILL of the serving process (issue 11, S3).

Several clients load a real `kmsgate serve` (fresh connections and pipelined ones, v4 to v6),
note the CMID of every answer they receive, and the process is SIGKILLed mid-load. With the
writer child, once it has finished; inline, once the node has started again on its data
directory (the ring file kept what was handed over): every received answer must be in the
database.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from pathlib import Path

import pytest

from tests.adversarial.host_attack import (
    Fields,
    Received,
    Serve,
    pipelined_connection,
)

pytestmark = pytest.mark.integration

KILL_AFTER = 3000  # received answers, as in the attack
CLIENTS = 8
LIMIT_SECONDS = 60


async def fresh_connections(port: int, received: Received, stop: asyncio.Event) -> None:
    """One request per connection, like a genuine client."""
    versions = itertools.cycle([6, 5, 4])
    while not stop.is_set():
        await pipelined_connection(port, [Fields(version=next(versions))], received)


async def kept_alive_connections(port: int, received: Received, stop: asyncio.Event) -> None:
    """Pipelined batches on connections of 500 requests each."""
    versions = itertools.cycle([4, 6])
    while not stop.is_set():
        requests = [Fields(version=next(versions)) for _ in range(500)]
        await pipelined_connection(port, requests, received, batch=32)


async def load_and_kill(serve: Serve) -> Received:
    received = Received()
    stop = asyncio.Event()
    workers = [
        asyncio.create_task(
            (fresh_connections if index % 2 else kept_alive_connections)(serve.port, received, stop)
        )
        for index in range(CLIENTS)
    ]
    try:
        async with asyncio.timeout(LIMIT_SECONDS):
            while received.count < KILL_AFTER:
                await asyncio.sleep(0.005)
        serve.kill()  # mid-load: requests in flight, answers on their way
    finally:
        stop.set()
        # Clients read whatever reached their sockets before the kill: received too.
        await asyncio.wait(workers, timeout=30)
        for worker in workers:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
    return received


@pytest.mark.parametrize("run", range(2))
@pytest.mark.parametrize("writer", ["inline", "process"])
def test_no_received_answer_is_lost_to_a_sigkill(tmp_path: Path, writer: str, run: int) -> None:
    serve = Serve.start(tmp_path, "--log-level", "warning", "--store-writer", writer)
    try:
        received = asyncio.run(load_and_kill(serve))
    finally:
        serve.stop()
    before_restart = len(serve.rows("SELECT cmid FROM activations"))
    if writer == "inline":
        # The next start writes what the ring file holds; a clean stop waits for it.
        Serve.start(tmp_path, "--log-level", "warning", "--store-writer", writer).stop()
    stored = {uuid.UUID(hex=str(cmid)) for (cmid,) in serve.rows("SELECT cmid FROM activations")}
    lost_served = received.served - stored
    lost_refused = received.refused - stored
    print(
        f"{writer} run {run}: {received.count} answers received, {before_restart} records "
        f"stored before a restart, {len(stored)} after, "
        f"{len(lost_served) + len(lost_refused)} received answers missing"
    )
    assert received.count >= KILL_AFTER
    assert not lost_served and not lost_refused
