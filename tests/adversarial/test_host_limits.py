"""Bounded memory and fair limits against a real `kmsgate serve` (issue 11, H2, H3, H4).

- H2: connections that pipeline requests and never read the answers stop being read; the
  serving process's memory stays bounded during the attack and after it.
- H3: one connection pipelining 150 000 requests cannot push other clients' records out
  of the store queue: a full queue delays answers, every answer is a record.
- H4: a per-source cap, a connection lifetime and a request cap, each on by default;
  binds alone do not keep a connection from its idle timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.adversarial.host_attack import (
    BlockingKmsConnection,
    Fields,
    PduReader,
    Received,
    Serve,
    answer_of,
    bind_pdu,
    pipelined_connection,
    rss_kib,
    v4_flood_chunk,
)

pytestmark = pytest.mark.integration

MIB = 1024


# ---------------------------------------------------------------- H2: no-read pipelining


def pipeline_without_reading(port: int, chunk: bytes, per_chunk: int, total: int) -> int:
    """Send `total` requests without ever reading; stop once the host has stopped taking
    them for 3 s. Returns how many requests the kernel accepted."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sent_bytes = 0
    try:
        sock.sendall(bind_pdu())
        sock.settimeout(3)
        limit = total // per_chunk * len(chunk)
        view = memoryview(chunk)
        while sent_bytes < limit:
            try:
                sent_bytes += sock.send(view[sent_bytes % len(chunk) :])
            except TimeoutError:
                break  # the host reads nothing more: the attack is held
        return sent_bytes * per_chunk // len(chunk)
    finally:
        sock.close()


def test_pipelining_without_reading_keeps_memory_bounded(tmp_path: Path) -> None:
    # The request cap would end these connections after 1 000 requests: switched off, so
    # that backpressure alone has to hold the attack.
    serve = Serve.start(tmp_path, "--log-level", "warning", "--max-requests-per-connection", "0")
    try:
        for version in (4, 5, 6):  # warm: the hot path's imports and caches
            connection = BlockingKmsConnection(serve.port)
            connection.bind()
            assert connection.ask(Fields(version=version).message()).served
            connection.close()
        time.sleep(1.0)
        idle = rss_kib(serve.pid)
        chunk, per_chunk, total = v4_flood_chunk(1000), 1000, 400_000
        accepted = [0] * 4
        peak = [idle]

        def attacker(index: int) -> None:
            accepted[index] = pipeline_without_reading(serve.port, chunk, per_chunk, total)

        threads = [threading.Thread(target=attacker, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            peak[0] = max(peak[0], rss_kib(serve.pid))
            time.sleep(0.1)
        for thread in threads:
            thread.join()
        during = peak[0]
        time.sleep(3.0)  # closed now: what stays?
        after = rss_kib(serve.pid)
        print(
            f"RSS idle {idle / MIB:.1f} MiB, peak during {during / MIB:.1f} MiB, "
            f"after {after / MIB:.1f} MiB; requests the kernel took per connection: {accepted}"
        )
        bound = 2 * idle + 64 * MIB
        assert during < bound and after < bound
        # The host stopped reading: most of each connection's 400 000 requests never left.
        assert all(count < total // 2 for count in accepted)
    finally:
        serve.stop()


# ---------------------------------------------------------------- H3: one flooding client


async def flood(port: int, total: int, answered: list[int]) -> None:
    """One connection pipelining `total` v4 requests while reading every answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    chunk = v4_flood_chunk(1000)
    writer.write(bind_pdu())

    async def send() -> None:
        for _ in range(total // 1000):
            writer.write(chunk)
            await writer.drain()

    sender = asyncio.create_task(send())
    pdus = PduReader()
    try:
        while answered[0] < total:
            data = await asyncio.wait_for(reader.read(1 << 16), 60)
            assert data, "the host closed the flooding connection"
            answered[0] += sum(answer_of(pdu) is not None for pdu in pdus.feed(data))
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        writer.close()


async def flood_with_real_clients(port: int, total: int) -> tuple[int, Received]:
    answered = [0]
    real = Received()
    flooding = asyncio.create_task(flood(port, total, answered))
    async with asyncio.timeout(240):
        while answered[0] < 2000:  # the flood is under way
            await asyncio.sleep(0.01)
        for _ in range(10):  # ten genuine activations from another address, during it
            await pipelined_connection(port, [Fields(version=6)], real, source="127.0.0.3")
            await asyncio.sleep(0.2)
        assert not flooding.done(), "the flood ended before the real clients were done"
        await flooding
    return answered[0], real


def test_one_flooding_connection_cannot_push_out_other_clients_records(tmp_path: Path) -> None:
    total = 150_000
    # A small queue makes it overflow early and often; no request cap, so the flood goes on.
    serve = Serve.start(
        tmp_path, "--log-level", "warning", "--store-queue", "2000",
        "--max-requests-per-connection", "0",
    )  # fmt: skip
    try:
        answered, real = asyncio.run(flood_with_real_clients(serve.port, total))
        assert answered == total and len(real.served) == 10
        deadline = time.monotonic() + 120
        while (count := stored_count(serve)) < total + 10 and time.monotonic() < deadline:
            time.sleep(0.2)
        real_stored = {
            uuid.UUID(hex=str(cmid))
            for (cmid,) in serve.rows("SELECT cmid FROM activations WHERE address = '127.0.0.3'")
        }
    finally:
        serve.stop()
    assert real_stored == real.served  # 10 of 10
    assert count == total + 10  # and every flooded answer is a record too
    log = serve.log_text()
    assert "store queue full" in log  # the queue did fill: answers waited, nothing dropped
    assert "dropped" not in log


def stored_count(serve: Serve) -> int:
    return int(str(serve.rows("SELECT count(*) FROM activations")[0][0]))


# ---------------------------------------------------------------- H4: per-connection limits


def test_the_default_per_source_cap_keeps_room_for_other_sources(tmp_path: Path) -> None:
    serve = Serve.start(tmp_path / "node", "--log-level", "warning")
    held: list[BlockingKmsConnection] = []
    try:
        refused = 0
        for _ in range(80):  # a client holding bound connections open, as in H4
            connection = BlockingKmsConnection(serve.port, source="127.0.0.4")
            try:
                connection.bind()
            except (ConnectionError, OSError):
                refused += 1
                connection.close()
                continue
            held.append(connection)
        assert (len(held), refused) == (64, 16)
        other = BlockingKmsConnection(serve.port, source="127.0.0.5")
        other.bind()
        assert other.ask(Fields(version=6).message()).served
        other.close()
        warnings = [r for r in serve.log_records() if "--max-connections-per-source" in str(r)]
        assert len(warnings) == 1 and "127.0.0.4" in str(warnings[0]["msg"])
    finally:
        for connection in held:
            connection.close()
        serve.stop()


def test_the_lifetime_closes_a_connection_that_keeps_binding_and_asking(tmp_path: Path) -> None:
    serve = Serve.start(
        tmp_path, "--log-level", "debug", "--connection-lifetime", "2", "--idle-timeout", "30"
    )
    try:
        connection = BlockingKmsConnection(serve.port)
        answered, closed = 0, False
        deadline = time.monotonic() + 15  # the idle timeout (30 s) cannot be what ends it
        while time.monotonic() < deadline:
            try:
                connection.bind()
                answered += connection.ask(Fields(version=4).message()).served
            except (ConnectionError, OSError):
                closed = True
                break
            time.sleep(0.2)
        connection.close()
        assert closed and answered >= 1
        assert any("open for 2 s" in str(r.get("msg")) for r in serve.log_records())
    finally:
        serve.stop()


def test_binds_every_few_seconds_do_not_hold_a_connection(tmp_path: Path) -> None:
    """H4's attack, sped up: a valid bind every 0.3 s against a 1 s idle timeout."""
    serve = Serve.start(tmp_path, "--log-level", "debug", "--idle-timeout", "1")
    try:
        connection = BlockingKmsConnection(serve.port)
        closed = False
        deadline = time.monotonic() + 15  # lifetime is 300 s: only the idle timer can act
        while time.monotonic() < deadline:
            try:
                connection.bind()
            except (ConnectionError, OSError):
                closed = True
                break
            time.sleep(0.3)
        connection.close()
        assert closed
        assert any("without a KMS request" in str(r.get("msg")) for r in serve.log_records())
    finally:
        serve.stop()


def test_the_request_cap_ends_a_connection(tmp_path: Path) -> None:
    serve = Serve.start(tmp_path, "--log-level", "warning", "--max-requests-per-connection", "3")
    try:
        connection = BlockingKmsConnection(serve.port)
        connection.bind()
        served = [connection.ask(Fields(version=v).message()).served for v in (4, 5, 6)]
        assert served == [True] * 3
        try:
            connection.ask(Fields(version=6).message())
        except (ConnectionError, OSError):
            pass
        else:
            raise AssertionError("a fourth request was answered")
        connection.close()
        deadline = time.monotonic() + 15
        while stored_count(serve) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stored_count(serve) == 3  # the unanswered fourth is no record either
    finally:
        serve.stop()
