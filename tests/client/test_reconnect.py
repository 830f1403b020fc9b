"""Hosts that close after each answer (py-kms, `vlmcsd -d`): the client and load generator
reconnect, as the reference client does; a host that drops a first request is still an error."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kmsgate.catalog import default_catalog
from kmsgate.client.activation import KmsClient
from kmsgate.client.errors import ConnectionClosedError
from kmsgate.client.exchange import RequestTemplate
from kmsgate.client.loadgen import LoadSettings, run_load
from kmsgate.protocol.engine import EngineConfig, KmsEngine, filetime_from_unix
from kmsgate.protocol.events import ActivationServed
from kmsgate.protocol.session import ServerSession, SessionSettings

pytestmark = pytest.mark.integration

EPID = "03612-00206-556-123727-03-1033-17763.0000-2972018"
KMSGATE = Path(sys.executable).with_name("kmsgate")


class OneAnswerHost:
    """A real host session that closes each connection after its first answer (or, with
    `answer=False`, right after the bind, dropping every request)."""

    def __init__(self, *, answer: bool = True) -> None:
        self.answer = answer
        self.connections = 0
        self.answered = 0
        self._engine = KmsEngine(EngineConfig(), lambda _: EPID)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.port = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        session = ServerSession(
            self._engine, SessionSettings(), random_bytes=os.urandom, assoc_group_id=7
        )
        try:
            while data := await reader.read(65536):
                events = session.receive_data(data, filetime_from_unix(time.time()))
                served = [e for e in events if isinstance(e, ActivationServed)]
                if served and not self.answer:
                    break  # drop the request unanswered
                # Counted before the answer leaves: the client may check as soon as it has it.
                self.answered += len(served)
                writer.write(session.data_to_send())
                await writer.drain()
                if served:
                    break
        finally:
            writer.close()

    def __enter__(self) -> OneAnswerHost:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def one_answer_host() -> Iterator[OneAnswerHost]:
    with OneAnswerHost() as host:
        yield host


def client() -> KmsClient:
    sku = default_catalog().resolve_product("Windows Server 2022 Standard")
    return KmsClient(RequestTemplate.from_sku(sku), timeout=5)


async def test_count_three_reconnects_after_each_answer(one_answer_host: OneAnswerHost) -> None:
    results = await client().activate("127.0.0.1", one_answer_host.port, count=3)
    assert [r.ok for r in results] == [True, True, True]
    assert {r.response.epid for r in results} == {EPID}
    assert (one_answer_host.connections, one_answer_host.answered) == (3, 3)


async def test_load_generator_reconnects_and_counts_connections(
    one_answer_host: OneAnswerHost,
) -> None:
    result = await run_load(
        client(),
        "127.0.0.1",
        one_answer_host.port,
        LoadSettings(total=40, concurrency=4, requests_per_connection=10, duration_limit=30),
    )
    assert (result.succeeded, result.failed, dict(result.errors)) == (40, 0, {})
    assert result.connections == 40 == one_answer_host.connections


async def test_a_host_that_drops_the_first_request_is_still_an_error() -> None:
    with OneAnswerHost(answer=False) as host:
        with pytest.raises(ConnectionClosedError, match="without answering the request"):
            await client().activate("127.0.0.1", host.port, count=3)
        assert host.connections == 1  # no reconnect loop on a host that never answers


def test_cli_count_three_against_a_one_answer_host(one_answer_host: OneAnswerHost) -> None:
    done = subprocess.run(
        [str(KMSGATE), "client", f"127.0.0.1:{one_answer_host.port}", "--count", "3", "--json",
         "--product", "Windows Server 2022 Standard"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert one_answer_host.answered == 3 == one_answer_host.connections
    requests = json.loads(done.stdout)["requests"]
    # Each request went on a fresh connection: each is that connection's first call.
    assert [r["call_id"] for r in requests] == [2, 2, 2]
    assert all(all(c["passed"] for c in r["checks"]) for r in requests)
