"""The web listener's guard: request deadline, connection limit, eviction of waiting clients."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from kmsgate.server.web_listener import (
    EmbeddedUvicorn,
    WebGuard,
    connection_limit,
    start_web_listener,
)

pytestmark = pytest.mark.integration

TIMEOUT = 0.5


class Listener:
    """A started web listener over a small app whose /slow waits for the test."""

    def __init__(self, server: EmbeddedUvicorn, task: asyncio.Task[None], gate: asyncio.Event):
        self.server, self.task, self.gate = server, task, gate

    @property
    def guard(self) -> WebGuard:
        assert self.server.guard is not None
        return self.server.guard

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        assert self.server.port is not None
        return await asyncio.open_connection("127.0.0.1", self.server.port)


@contextlib.asynccontextmanager
async def listener(max_connections: int = 100) -> AsyncIterator[Listener]:
    app = FastAPI()
    gate = asyncio.Event()

    @app.get("/ok")
    async def ok() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.post("/echo")
    async def echo(body: dict[str, str]) -> dict[str, str]:
        return body

    @app.get("/slow")
    async def slow() -> PlainTextResponse:
        await gate.wait()
        return PlainTextResponse("slow")

    server, task = await start_web_listener(
        app, "127.0.0.1", 0, cert=None, key=None,
        max_connections=max_connections, request_timeout=TIMEOUT,
    )  # fmt: skip
    try:
        yield Listener(server, task, gate)
    finally:
        gate.set()
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def read_all(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything until the server closes (bounded)."""
    data = b""
    async with asyncio.timeout(timeout):
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                data += chunk
    return data


def request(path: str = "/ok", *, close: bool = False) -> bytes:
    ending = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{ending}\r\n".encode()


async def test_incomplete_headers_get_408_and_are_closed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "kmsgate.web")
    async with listener() as web:
        reader, writer = await web.connect()
        writer.write(b"GET /ok HTTP/1.1\r\nHost: t\r\n")  # no blank line: never complete

        async def dribble() -> None:  # a header line every TIMEOUT/4, for 5 s if allowed
            with contextlib.suppress(ConnectionError):
                for _ in range(40):
                    await asyncio.sleep(TIMEOUT / 4)
                    writer.write(b"X-A: b\r\n")
                    await writer.drain()

        dribbler = asyncio.create_task(dribble())
        answer = await read_all(reader, timeout=4)  # closed long before the dribble ends
        dribbler.cancel()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout")
        assert web.guard.timed_out == 1
        web.guard.report()
    assert "closed 1 connections that sent no complete request within 0.5 s" in caplog.text


async def test_a_body_sent_too_slowly_is_cut() -> None:
    async with listener() as web:
        reader, writer = await web.connect()
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n"
            b"content-length: 100\r\n\r\n{"
        )
        answer = await read_all(reader)
        writer.close()
        assert b"200 OK" not in answer
        assert web.guard.timed_out == 1


async def test_kept_alive_connections_get_a_fresh_deadline_per_request() -> None:
    async with listener() as web:
        reader, writer = await web.connect()
        for _ in range(3):
            await asyncio.sleep(TIMEOUT / 2)  # together longer than one timeout
            writer.write(request())
            head = await asyncio.wait_for(reader.readuntil(b"ok"), 5)
            assert head.startswith(b"HTTP/1.1 200")
        writer.write(b"GET /ok HTTP/1.1\r\n")  # then a partial one
        assert (await read_all(reader)).startswith(b"HTTP/1.1 408")
        writer.close()
        assert web.guard.timed_out == 1


async def test_at_the_limit_the_oldest_waiting_connection_makes_room() -> None:
    async with listener(max_connections=3) as web:
        held = [await web.connect() for _ in range(3)]
        for _, writer in held:
            writer.write(b"GET /ok HTTP/1.1\r\n")
        await asyncio.sleep(0.1)
        reader, writer = await web.connect()
        writer.write(request(close=True))
        assert (await read_all(reader)).startswith(b"HTTP/1.1 200")
        # The first (oldest) held connection was closed without an answer; the newest served.
        assert await read_all(held[0][0]) == b""
        assert web.guard.evicted >= 1
        assert len(web.guard.open) <= 3
        for _, w in (*held, (reader, writer)):
            w.close()


async def test_at_the_limit_with_every_connection_busy_new_ones_get_503() -> None:
    async with listener(max_connections=2) as web:
        busy = [await web.connect() for _ in range(2)]
        for _, writer in busy:
            writer.write(request("/slow", close=True))
        await asyncio.sleep(0.1)
        reader, writer = await web.connect()
        refused = await read_all(reader)
        assert refused.startswith(b"HTTP/1.1 503") and b"retry-after: 5" in refused
        assert web.guard.refused == 1
        web.gate.set()
        for busy_reader, _ in busy:
            answer = await asyncio.wait_for(busy_reader.readuntil(b"slow"), 5)
            assert answer.startswith(b"HTTP/1.1 200")  # in-flight requests were not cut
        for _, w in (*busy, (reader, writer)):
            w.close()


@pytest.mark.parametrize(
    ("configured", "open_files", "expected"),
    [(1000, 65536, 1000), (1000, 2048, 512), (1000, 1024, 256), (1000, 20, 16), (8, 1024, 8)],
)
def test_connection_limit_keeps_three_quarters_of_the_descriptors(
    configured: int, open_files: int, expected: int
) -> None:
    assert connection_limit(configured, open_files) == expected
