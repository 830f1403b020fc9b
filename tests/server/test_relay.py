"""Relay mode on loopback: client -> relay -> a second kmsgate host as the genuine upstream."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar, cast

import pytest

from kmsgate.client.activation import KmsClient
from kmsgate.client.exchange import RequestTemplate
from kmsgate.config.settings import ServeSettings
from kmsgate.net import Peer
from kmsgate.node import Node
from kmsgate.protocol import ndr, rpc
from kmsgate.protocol.client_session import expect_response
from kmsgate.protocol.errors import ActivationError
from kmsgate.protocol.events import (
    ActivationRefused,
    ActivationServed,
    BindCompleted,
    ConnectionClosed,
    Event,
    FaultSent,
)
from kmsgate.protocol.hresult import HResult
from kmsgate.protocol.messages import encode_request
from kmsgate.protocol.ndr import TransferSyntax
from kmsgate.recording.recorder import ActivationRecorder
from kmsgate.server.host import KmsHost
from kmsgate.server.relay import Relay, relay_factory
from kmsgate.server.relay_connection import RelayConnection
from kmsgate.store.drafts import RecordDraft, record_of
from kmsgate.store.records import ActivationRecord
from tests.adversarial.host_attack import Answer, BlockingKmsConnection, Fields
from tests.support.kms import (
    SERVER_2019_DC_SKU,
    SERVER_2019_KMS,
    WINDOWS_APP,
    RawClient,
    activate_once,
    make_request,
    read_until_closed,
)
from tests.support.ports import closed_port
from tests.support.stall import stall_writer as _stall

pytestmark = pytest.mark.integration

E = TypeVar("E", bound=Event)
PRODUCT = "Windows Server 2019 Datacenter"
EPID = "06401-00206-271-298329-03-1033-9600.0000-0452017"


def settings(**overrides: object) -> ServeSettings:
    base: dict[str, object] = {"listen": ["127.0.0.1:0"], "idle_timeout": 5.0}
    base.update(overrides)
    return ServeSettings(**base)  # type: ignore[arg-type]


@dataclass
class Relayed:
    """A relay listener in front of `upstream`, recording through `host`."""

    host: KmsHost
    relay: Relay
    port: int
    events: list[tuple[Peer, Event]] = field(default_factory=list)

    def of(self, kind: type[E]) -> list[E]:
        return [event for _, event in self.events if isinstance(event, kind)]

    def connection(self) -> RelayConnection:
        [conn] = self.host.connections
        return cast(RelayConnection, conn)


def hooked(host: KmsHost) -> list[tuple[Peer, Event]]:
    events: list[tuple[Peer, Event]] = []
    host.event_hooks.append(lambda peer, event: events.append((peer, event)))
    return events


@contextlib.asynccontextmanager
async def relay_to(
    upstream: tuple[str, int], connect_timeout: float | None = None, **overrides: object
) -> AsyncIterator[Relayed]:
    # The relay's host is never started: the test opens the relay listener itself.
    host = KmsHost(settings(**overrides))
    relay = relay_factory(host, upstream)
    if connect_timeout is not None:
        relay.connect_timeout = connect_timeout
    server = await asyncio.get_running_loop().create_server(relay, "127.0.0.1", 0)
    relayed = Relayed(host, relay, server.sockets[0].getsockname()[1])
    relayed.events = hooked(host)
    try:
        yield relayed
    finally:
        server.close()
        await host.stop(drain_timeout=0)
        await server.wait_closed()


async def closed_by_relay(reader: asyncio.StreamReader) -> bytes:
    """What arrives before the relay closes; a reset (unread bytes at close) counts as closed."""
    try:
        return await read_until_closed(reader)
    except ConnectionResetError:
        return b""


async def settle(condition: object, timeout: float = 3.0) -> None:
    """Wait until `condition()` holds (connection teardown runs a few loop turns later)."""
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.01)


# --- activations --------------------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 5, 6])
async def test_relayed_activation_is_recorded_like_a_local_one(version: int) -> None:
    async with KmsHost(settings()) as upstream, relay_to(("127.0.0.1", upstream.port)) as relayed:
        upstream_events = hooked(upstream)
        records: list[ActivationRecord] = []

        def submit(draft: RecordDraft) -> bool:
            records.append(record_of(draft))
            return True

        recorder = ActivationRecorder(
            submit,
            relayed.host.catalog,
            node="relay-node",
            clock=lambda: 1_795_392_000_000_000,  # 2026-11-23 00:00 UTC
        )
        relayed.host.event_hooks.append(recorder)
        result = await activate_once(relayed.port, version)
        assert result.ok  # the client's strict checks: the bytes arrived unchanged
        [served] = relayed.of(ActivationServed)
        assert isinstance(served, ActivationServed)
        assert served == next(e for _, e in upstream_events if isinstance(e, ActivationServed))
        assert served.request.machine_name == "test-pc.example.test"
        assert served.response.epid == result.response.epid
        assert (
            relayed.host.catalog.product_name(served.request.sku_id, served.request.kms_counted_id)
            == PRODUCT
        )
        assert (relayed.host.stats.activations, relayed.host.stats.by_version) == (1, {version: 1})
        assert upstream.stats.activations == 1
        [record] = records
        assert (record.machine_name, record.sku_name, record.protocol) == (
            "test-pc.example.test",
            PRODUCT,
            version,
        )
        assert (record.result, record.epid, record.address) == (
            "activated",
            result.response.epid,
            "127.0.0.1",
        )
        assert (record.time, record.node) == (datetime(2026, 11, 23, tzinfo=UTC), "relay-node")


async def test_several_requests_on_one_connection_give_the_upstreams_events() -> None:
    async with KmsHost(settings()) as upstream, relay_to(("127.0.0.1", upstream.port)) as relayed:
        upstream_events = hooked(upstream)
        client = await RawClient.connect(relayed.port)
        await client.bind()
        syntaxes = []
        for version in (6, 5, 4, 6):
            assert (await client.activate(version)).ok
            syntaxes.append(client.session.syntax)
        await client.close()
        assert syntaxes == [TransferSyntax.NDR32] + [TransferSyntax.NDR64] * 3
        # Bind, alter_context and every activation: the very same events, NDR64 included.
        assert [e for _, e in relayed.events] == [e for _, e in upstream_events]
        assert len(relayed.of(BindCompleted)) == 2
        assert [e.syntax for e in relayed.of(ActivationServed)] == syntaxes
        await settle(lambda: not relayed.host.connections and not upstream.connections)


async def test_strict_kms_client_through_the_relay() -> None:
    template = RequestTemplate(
        application_id=WINDOWS_APP,
        sku_id=SERVER_2019_DC_SKU,
        kms_counted_id=SERVER_2019_KMS,
        required_client_count=5,
        machine_name="relayed.example.test",
    )
    async with KmsHost(settings()) as upstream, relay_to(("127.0.0.1", upstream.port)) as relayed:
        results = await KmsClient(template).activate("127.0.0.1", relayed.port, count=3)
        assert all(result.ok for result in results)
        served = relayed.of(ActivationServed)
        assert [e.request.machine_name for e in served] == ["relayed.example.test"] * 3
        assert [e.response.epid for e in served] == [r.response.epid for r in results]
        assert relayed.relay.stats.notes == 0


async def test_upstream_refusal_reaches_the_client_and_is_recorded_refused() -> None:
    refusing = settings(deny_product=[str(SERVER_2019_KMS)])
    async with KmsHost(refusing) as upstream, relay_to(("127.0.0.1", upstream.port)) as relayed:
        client = await RawClient.connect(relayed.port)
        await client.bind()
        with pytest.raises(ActivationError) as caught:
            await client.activate(5)
        assert caught.value.hresult == HResult.PRODUCT_NOT_ALLOWED
        await client.close()
        [refused] = relayed.of(ActivationRefused)
        assert isinstance(refused, ActivationRefused)
        assert refused.hresult == HResult.PRODUCT_NOT_ALLOWED
        assert refused.request is not None and refused.request.kms_counted_id == SERVER_2019_KMS
        assert relayed.host.stats.refusals == 1 and relayed.host.stats.activations == 0


async def test_upstream_fault_is_relayed_and_the_connection_stays_usable() -> None:
    async with KmsHost(settings()) as upstream, relay_to(("127.0.0.1", upstream.port)) as relayed:
        client = await RawClient.connect(relayed.port)
        await client.bind()
        stub = ndr.wrap_request(encode_request(make_request(), bytes(16)), TransferSyntax.NDR32)
        client.writer.write(rpc.encode_pdu(rpc.Request(9, 7, 0, stub)))
        fault = rpc.decode_pdu(await client.read_pdu())
        assert isinstance(fault, rpc.Fault) and fault.status == rpc.NCA_UNK_IF
        assert (await client.activate()).ok
        await client.close()
        [sent] = relayed.of(FaultSent)
        assert isinstance(sent, FaultSent) and (sent.call_id, sent.status) == (9, rpc.NCA_UNK_IF)
        assert relayed.host.stats.faults == 1 and relayed.host.stats.activations == 1


async def test_half_closed_client_still_gets_its_answer() -> None:
    async with KmsHost(settings()) as upstream, relay_to(("127.0.0.1", upstream.port)) as relayed:
        client = await RawClient.connect(relayed.port)
        await client.bind()
        message = encode_request(make_request(4), os.urandom(16))
        client.session.send_request(message)
        client.writer.write(client.session.data_to_send())
        client.writer.write_eof()
        answer = expect_response(await client.read_event()).message
        assert answer[2] == 4
        assert await read_until_closed(client.reader) == b""
        assert relayed.host.stats.activations == 1


@pytest.mark.skipif(
    "upstream" not in ServeSettings.model_fields, reason="needs the settings.upstream field"
)
async def test_host_started_with_the_relay_factory_relays_its_listeners() -> None:
    async with KmsHost(settings(epid=EPID)) as upstream:
        # Its own HWID: hosts sharing a data directory would share a saved identity.
        relaying = KmsHost(settings(upstream=f"127.0.0.1:{upstream.port}", hwid="0011223344556677"))
        await relaying.start(relay_factory(relaying, ("127.0.0.1", upstream.port)))
        try:
            result = await activate_once(relaying.port, 6)
        finally:
            await relaying.stop(drain_timeout=0)
        assert result.ok and result.response.epid == EPID
        assert result.hwid == upstream.identity.hwid != relaying.identity.hwid
        assert (relaying.stats.activations, upstream.stats.activations) == (1, 1)


async def test_a_host_with_an_upstream_but_no_relay_refuses_to_serve_locally() -> None:
    """Answering with its own keys while configured to relay would hand out the wrong host."""
    host = KmsHost(settings(upstream="127.0.0.1:1688", hwid="0011223344556677"))
    with pytest.raises(ValueError, match="upstream"):
        await host.start()
    assert host.addresses == []
    with pytest.raises(ValueError, match="upstream"):
        await KmsHost(settings()).start(relay_factory(host, ("127.0.0.1", 1688)))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_bind_and_eof_sent_before_the_upstream_connects_are_both_delivered(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    connect = RelayConnection._open_upstream

    async def slow_connect(self: RelayConnection) -> None:
        await asyncio.sleep(0.2)
        await connect(self)

    monkeypatch.setattr(RelayConnection, "_open_upstream", slow_connect)

    async def scenario() -> None:
        async with (
            KmsHost(settings()) as upstream,
            relay_to(("127.0.0.1", upstream.port)) as relayed,
        ):
            client = await RawClient.connect(relayed.port)
            client.writer.write(client.bind_pdu())
            client.writer.write_eof()
            ack = rpc.decode_pdu(await client.read_pdu())
            assert isinstance(ack, rpc.BindAck)
            assert await read_until_closed(client.reader) == b""
            assert len(relayed.of(BindCompleted)) == 1

    factory = asyncio.new_event_loop
    if loop == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(scenario())


# --- failures -----------------------------------------------------------------------------


async def test_unreachable_upstream_closes_the_client_with_a_logged_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kmsgate")
    async with relay_to(("127.0.0.1", closed_port())) as relayed:
        client = await RawClient.connect(relayed.port)
        client.writer.write(client.bind_pdu())
        assert await closed_by_relay(client.reader) == b""
        [closed] = relayed.of(ConnectionClosed)
        assert isinstance(closed, ConnectionClosed)
        assert "unreachable: Connection refused" in closed.reason
        assert relayed.relay.stats.upstream_failures == 1
        assert relayed.host.stats.protocol_closes == 1
        await settle(lambda: not relayed.host.connections)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("unreachable" in r.getMessage() for r in warnings)


async def test_upstream_that_never_accepts_times_out() -> None:
    # A listener whose accept queue is full drops further SYNs: the connect hangs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(4):
            sock = socket.socket()
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(("127.0.0.1", port))
            fillers.append(sock)
        try:
            async with relay_to(("127.0.0.1", port), connect_timeout=0.3) as relayed:
                reader, _ = await asyncio.open_connection("127.0.0.1", relayed.port)
                assert await read_until_closed(reader) == b""
                [closed] = relayed.of(ConnectionClosed)
                assert isinstance(closed, ConnectionClosed)
                assert "no connection within 0.3 s" in closed.reason
        finally:
            for sock in fillers:
                sock.close()


async def test_garbage_the_upstream_closes_on_is_recorded_as_a_protocol_close() -> None:
    async with KmsHost(settings()) as upstream, relay_to(("127.0.0.1", upstream.port)) as relayed:
        reader, writer = await asyncio.open_connection("127.0.0.1", relayed.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await read_until_closed(reader) == b""
        assert upstream.stats.protocol_closes == 1
        [closed] = relayed.of(ConnectionClosed)
        assert isinstance(closed, ConnectionClosed)
        assert "unsupported RPC version" in closed.reason
        assert relayed.host.stats.protocol_closes == 1
        assert relayed.relay.stats.notes == 1
        assert (await activate_once(relayed.port)).ok  # the next client is relayed as usual


async def test_client_leaving_closes_the_upstream_connection() -> None:
    async with KmsHost(settings()) as upstream, relay_to(("127.0.0.1", upstream.port)) as relayed:
        client = await RawClient.connect(relayed.port)
        await client.bind()
        await settle(lambda: upstream.stats.connections_open == 1)
        await client.close()
        await settle(lambda: upstream.stats.connections_open == 0)
        await settle(lambda: relayed.host.stats.connections_open == 0)


async def test_upstream_closing_closes_the_client() -> None:
    async with (
        KmsHost(settings(idle_timeout=0.3)) as upstream,
        relay_to(("127.0.0.1", upstream.port)) as relayed,
    ):
        client = await RawClient.connect(relayed.port)
        await client.bind()
        assert await read_until_closed(client.reader) == b""
        assert upstream.stats.idle_closes == 1
        assert not relayed.of(ConnectionClosed)  # an idle close is not a protocol break


async def test_idle_relayed_client_is_closed_on_both_sides() -> None:
    async with (
        KmsHost(settings(idle_timeout=30)) as upstream,
        relay_to(("127.0.0.1", upstream.port), idle_timeout=0.3) as relayed,
    ):
        reader, _ = await asyncio.open_connection("127.0.0.1", relayed.port)
        assert await read_until_closed(reader) == b""
        assert relayed.host.stats.idle_closes == 1
        await settle(lambda: upstream.stats.connections_open == 0)


async def test_the_lifetime_closes_a_busy_relayed_connection_on_both_sides() -> None:
    # A client that keeps asking is closed at --connection-lifetime however busy, and the
    # relay's upstream connection goes with it.
    async with (
        KmsHost(settings(idle_timeout=30)) as upstream,
        relay_to(("127.0.0.1", upstream.port), connection_lifetime=0.5, idle_timeout=30) as relayed,
    ):
        client = await RawClient.connect(relayed.port)
        await client.bind()
        answered = 0
        async with asyncio.timeout(10):
            while True:
                try:
                    assert (await client.activate()).ok
                except (ConnectionError, EOFError, asyncio.IncompleteReadError):
                    break
                answered += 1
                await asyncio.sleep(0.05)
        assert answered >= 1
        stats = relayed.host.stats
        assert (stats.lifetime_closes, stats.idle_closes) == (1, 0)
        await settle(lambda: upstream.stats.connections_open == 0)


async def test_source_policy_applies_before_the_upstream_is_contacted() -> None:
    async with (
        KmsHost(settings()) as upstream,
        relay_to(("127.0.0.1", upstream.port), deny=["127.0.0.0/8"]) as relayed,
    ):
        reader, _ = await asyncio.open_connection("127.0.0.1", relayed.port)
        assert await read_until_closed(reader) == b""
        assert relayed.host.stats.connections_denied == 1
        assert upstream.stats.connections_accepted == 0


async def test_host_stop_closes_relayed_connections() -> None:
    async with KmsHost(settings()) as upstream, relay_to(("127.0.0.1", upstream.port)) as relayed:
        client = await RawClient.connect(relayed.port)
        await client.bind()
        await relayed.host.stop(drain_timeout=0)
        assert await read_until_closed(client.reader) == b""
        await settle(lambda: upstream.stats.connections_open == 0)


# --- backpressure -------------------------------------------------------------------------

PAYLOAD = 32 * 1024 * 1024
BOUND = 1024 * 1024  # what one relayed connection may hold: high-water marks plus a read


class _Peer(asyncio.Protocol):
    """A raw upstream that swallows (when reading) or floods (when given data) its client."""

    def __init__(self, flood: bytes | None) -> None:
        self.flood = flood
        self.holding = flood is None
        self.received = hashlib.sha256()
        self.count = 0
        self.transport: asyncio.Transport | None = None
        self.sending: asyncio.Task[None] | None = None
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.holding:
            self.transport.pause_reading()  # swallow nothing until the test says so
        elif (flood := self.flood) is not None:
            self.sending = asyncio.get_running_loop().create_task(self._send(flood))

    async def _send(self, data: bytes) -> None:
        assert self.transport is not None
        for start in range(0, len(data), 65536):
            await self.writable.wait()
            self.transport.write(data[start : start + 65536])
        self.transport.close()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        self.received.update(data)
        self.count += len(data)
        if self.holding and self.transport is not None:
            self.transport.pause_reading()  # uvloop ignores a pause made in connection_made

    def release(self) -> None:
        self.holding = False
        if self.transport is not None:
            self.transport.resume_reading()


async def _peak(relayed: Relayed, until: object, timeout: float = 20.0) -> int:
    """The most bytes the relayed connection held while waiting for `until()`."""
    peak = 0
    async with asyncio.timeout(timeout):
        while not until():  # type: ignore[operator]
            if relayed.host.connections:
                peak = max(peak, relayed.connection().buffered())
            await asyncio.sleep(0.002)
    return peak


def small_window_socket() -> socket.socket:
    """A socket whose small receive buffer keeps the kernel from absorbing the payload."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    return sock


async def test_slow_upstream_pushes_back_on_the_client() -> None:
    junk = b"\x00" + os.urandom(PAYLOAD - 1)  # not RPC: the observer stops framing at once
    peers: list[_Peer] = []

    def factory() -> _Peer:
        peers.append(_Peer(None))
        return peers[-1]

    listener = small_window_socket()  # accepted sockets inherit the buffer size
    listener.bind(("127.0.0.1", 0))
    sink = await asyncio.get_running_loop().create_server(factory, sock=listener)
    try:
        async with relay_to(listener.getsockname()) as relayed:
            _, writer = await asyncio.open_connection("127.0.0.1", relayed.port)
            writer.write(junk)
            await asyncio.sleep(0.5)
            # The upstream reads nothing: the relay stopped reading the client, holding little.
            assert relayed.connection().buffered() < BOUND
            assert relayed.relay.stats.bytes_to_upstream < PAYLOAD // 2
            [peer] = peers
            assert peer.count < BOUND
            peer.release()
            peak = await _peak(relayed, lambda: peer.count == PAYLOAD)
            assert peak < BOUND
            assert peer.received.digest() == hashlib.sha256(junk).digest()
            writer.close()
    finally:
        sink.close()
        await sink.wait_closed()


async def test_slow_client_pushes_back_on_the_upstream() -> None:
    junk = b"\x00" + os.urandom(PAYLOAD - 1)
    loop = asyncio.get_running_loop()
    source = await loop.create_server(lambda: _Peer(junk), "127.0.0.1", 0)
    try:
        async with relay_to(("127.0.0.1", source.sockets[0].getsockname()[1])) as relayed:
            sock = small_window_socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", relayed.port))
            reader, writer = await asyncio.open_connection(sock=sock, limit=65536)
            await asyncio.sleep(0.5)  # the client reads nothing yet
            assert relayed.connection().buffered() < BOUND
            assert relayed.relay.stats.bytes_to_clients < PAYLOAD // 2
            received = hashlib.sha256()
            count = 0
            peak = 0
            while data := await asyncio.wait_for(reader.read(1 << 20), 10):
                received.update(data)
                count += len(data)
                if relayed.host.connections:
                    peak = max(peak, relayed.connection().buffered())
            assert count == PAYLOAD and peak < BOUND
            assert received.digest() == hashlib.sha256(junk).digest()
            writer.close()
    finally:
        source.close()
        await source.wait_closed()


# --- uvloop (what `kmsgate serve` runs) ---------------------------------------------------


@pytest.mark.parametrize(
    "scenario",
    [
        test_several_requests_on_one_connection_give_the_upstreams_events,
        test_half_closed_client_still_gets_its_answer,
        test_slow_upstream_pushes_back_on_the_client,
        test_slow_client_pushes_back_on_the_upstream,
    ],
    ids=["activations", "half-close", "slow-upstream", "slow-client"],
)
def test_under_uvloop(scenario: Callable[[], Coroutine[None, None, None]]) -> None:
    # uvloop reads right after connection_made despite a pause there: the relay must keep
    # what arrives before the upstream is connected.
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


# --- records before answers in relay mode (issue 11, S3) ---------------------------------


@pytest.mark.parametrize("writer_kind", ["process", "inline"])
@pytest.mark.parametrize("upstream_requests", [0, 1], ids=["kept-open", "closed-after-answer"])
async def test_relayed_answers_wait_until_their_records_are_handed_over(
    tmp_path: Path, writer_kind: str, upstream_requests: int
) -> None:
    """A store that takes nothing more holds the upstream's answers too, also when the
    upstream closes right after answering; they leave once the store takes their records."""
    async with KmsHost(settings(max_requests_per_connection=upstream_requests)) as upstream:
        config = ServeSettings.model_validate(
            {
                "listen": ["127.0.0.1:0"],
                "upstream": f"127.0.0.1:{upstream.port}",
                "db": f"sqlite:///{tmp_path / 'kms.db'}",
                "data_dir": tmp_path,
                "no_web": True,
                "store_queue": 4,
                "store_flush_interval": 0.01,
                "store_writer": writer_kind,
            }
        )
        async with Node(config) as node:
            assert node.host is not None and node.writer is not None
            writer, port = node.writer, node.host.port
            stuck = _stall(writer)

            def ask_once(version: int) -> Answer:
                connection = BlockingKmsConnection(port)
                try:
                    connection.bind()
                    return connection.ask(Fields(version=version).message())
                finally:
                    connection.close()

            first = [await asyncio.to_thread(ask_once, 4) for _ in range(4)]
            assert all(a.served for a in first)  # the queue had room for these
            fifth = asyncio.ensure_future(asyncio.to_thread(ask_once, 6))
            await asyncio.sleep(0.5)
            assert not fifth.done()  # its record has no room: the relay holds its answer
            assert upstream.stats.activations == 5 and writer.dropped == 0
            stuck.release()
            assert (await asyncio.wait_for(fifth, 15)).served
            async with asyncio.timeout(15):
                while writer.written < 5:
                    await asyncio.sleep(0.02)
            assert (writer.written, writer.dropped) == (5, 0)
