"""W5: held-open web connections can neither exhaust the process's descriptors nor starve KMS.

A real `kmsgate serve` starts with RLIMIT_NOFILE 1024/2048 (it raises the soft limit to 2048,
so the web listener may hold 512). 4 000 connections then send an incomplete request each and
hold it. Meanwhile KMS activations and /healthz must keep working; the web listener must
hold no more than its share; every held connection must be closed after the request timeout;
and the log must account for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
import time
from pathlib import Path

import httpx
import pytest

from tests.support.kms import activate_once
from tests.support.web_node import Node, running

pytestmark = [pytest.mark.timeout(300), pytest.mark.integration]
ATTACKERS = 4000
REQUEST_TIMEOUT = 3.0
HARD_LIMIT = 2048
WEB_SHARE = HARD_LIMIT // 4
PARTIAL_REQUEST = b"GET /dashboard HTTP/1.1\r\nHost: kms.example\r\nX-Slow: "
REPORT_RE = re.compile(
    r"web listener: closed (\d+) connections that sent no complete request within 3 s; "
    r"at the limit of (\d+) connections, closed (\d+) waiting ones to make room and refused (\d+)"
)


def web_sockets_held(pid: int, port: int) -> int:
    """Descriptors of process pid that are TCP connections on its local port `port`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] != "0A":  # 0A: the listening socket
                    inodes.add(fields[9])
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):
            target = fd.readlink().name
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held += 1
    return held


def open_descriptors(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


def raise_own_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = ATTACKERS + 1000
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.fail(f"the test needs {wanted} descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def attack(node: Node) -> tuple[list[str], list[int], int, int]:
    """Hold ATTACKERS partial requests while probing KMS and /healthz; see the test."""
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    slots = asyncio.Semaphore(200)

    async def hold() -> None:
        async with slots:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", node.web_port), 30
            )
            with contextlib.suppress(ConnectionError):
                writer.write(PARTIAL_REQUEST)
                await writer.drain()
            connections.append((reader, writer))

    probes: list[str] = []
    most_held = 0
    most_open = 0
    attacking = asyncio.Event()

    async def probe() -> None:
        nonlocal most_held, most_open
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as client:
            while not attacking.is_set():
                result = await activate_once(node.kms_port)
                health = await client.get("/healthz", headers={"connection": "close"})
                probes.append(f"kms={result.response.current_client_count > 0} "
                              f"health={health.status_code}")  # fmt: skip
                most_held = max(most_held, web_sockets_held(node.pid, node.web_port))
                most_open = max(most_open, open_descriptors(node.pid))
                await asyncio.sleep(0.1)

    ends: list[int] = []

    async def wait_closed(reader: asyncio.StreamReader) -> None:
        received = b""
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(4096):
                received += chunk
        ends.append(408 if received.startswith(b"HTTP/1.1 408") else 0)

    # The probe runs while the connections are opened and while they are held, until the
    # server has closed every one of them (after the request timeout at the latest).
    prober = asyncio.create_task(probe())
    try:
        await asyncio.gather(*(hold() for _ in range(ATTACKERS)))
        await asyncio.wait_for(
            asyncio.gather(*(wait_closed(reader) for reader, _ in connections)),
            REQUEST_TIMEOUT + 60,
        )
    finally:
        attacking.set()
        await prober
        for _, writer in connections:
            writer.close()
    return probes, ends, most_held, most_open


def test_held_web_connections_are_capped_and_timed_out_while_kms_serves(
    tmp_path: Path,
) -> None:
    raise_own_limit()
    node = Node(
        tmp_path / "node",
        "--web-request-timeout", str(REQUEST_TIMEOUT),
        open_files=(1024, HARD_LIMIT),
    )  # fmt: skip
    with running(node):
        probes, ends, most_held, most_open = asyncio.run(attack(node))
        # After the attack: still serving, and the log accounts for every connection.
        assert asyncio.run(activate_once(node.kms_port)).response.current_client_count > 0
        assert httpx.get(f"{node.url}/healthz", timeout=10).status_code == 200
        deadline = time.monotonic() + 30
        while True:
            reports = [tuple(map(int, m)) for m in REPORT_RE.findall(node.log())]
            closed = sum(late + evicted + refused for late, _, evicted, refused in reports)
            if closed >= ATTACKERS or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        log = node.log()
    print(f"web connections held at most: {most_held}; descriptors at most: {most_open}")
    assert len(probes) >= 5 and all(p == "kms=True health=200" for p in probes), probes
    assert len(ends) == ATTACKERS  # all closed by the server, none left hanging
    assert ends.count(408) >= 1  # the held ones that were not pushed out were told why
    assert most_held <= WEB_SHARE + 1, most_held  # + the probe's own
    assert most_open < HARD_LIMIT
    assert "open-files limit raised from 1024 to 2048" in log
    assert f"web listener: at most {WEB_SHARE} connections" in log
    assert all(limit == WEB_SHARE for _, limit, _, _ in reports)
    assert closed == ATTACKERS, reports
    assert "Too many open files" not in log and "Traceback" not in log
