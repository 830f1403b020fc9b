"""S4: a flood of connections without a window is audited per source and minute, not each."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.adversarial.gateway_util import audit, gateway_node

pytestmark = pytest.mark.integration

CONNECTIONS = 2000
SOURCES = ("127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.13")
CONCURRENCY = 64
FLOOD_TIMEOUT = 120.0


async def flood(port: int) -> Counter[str]:
    """Open CONNECTIONS connections (bounded concurrency); count how each one ended."""
    slots = asyncio.Semaphore(CONCURRENCY)
    ended: Counter[str] = Counter()

    async def one(n: int) -> None:
        async with slots:
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, local_addr=(SOURCES[n % len(SOURCES)], 0)
                )
            except OSError:
                ended["connect failed"] += 1
                return
            try:
                ended["closed by host" if await reader.read() == b"" else "got bytes"] += 1
            except ConnectionError:
                ended["reset"] += 1
            finally:
                writer.close()

    async with asyncio.timeout(FLOOD_TIMEOUT):
        await asyncio.gather(*(one(n) for n in range(CONNECTIONS)))
    return ended


def test_refused_flood_is_a_handful_of_counted_rows(tmp_path: Path) -> None:
    with gateway_node(tmp_path) as node:
        started = time.monotonic()
        ended = asyncio.run(flood(node.kms_port))
        elapsed = time.monotonic() - started
    assert ended == {"closed by host": CONNECTIONS}, ended
    rows = [e for e in audit(tmp_path, "--kind", "connection_refused") if e["address"] in SOURCES]
    per_source = Counter[str]()
    for row in rows:
        per_source[row["address"]] += row["count"]
        assert row["detail"].startswith("no open activation window: ")
    assert sum(per_source.values()) == CONNECTIONS
    assert per_source == dict.fromkeys(SOURCES, CONNECTIONS // len(SOURCES))
    # One row per source and minute: the burst spans one minute boundary at most here.
    minutes = 1 + int(elapsed // 60) + 1
    assert len(rows) <= len(SOURCES) * minutes, rows
    print(f"\n{CONNECTIONS} refused connections in {elapsed:.1f} s -> {len(rows)} audit rows")
