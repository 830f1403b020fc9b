"""The asyncio host on loopback: activations, bad input, idle and slow clients, limits."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import resource
import socket
import uuid
from pathlib import Path

import pytest

from kmsgate.config.settings import ServeSettings
from kmsgate.node import Node
from kmsgate.protocol import ndr, rpc
from kmsgate.protocol.messages import encode_request
from kmsgate.protocol.ndr import TransferSyntax
from kmsgate.protocol.session import ServerSession
from kmsgate.server.connection import (
    _PAUSED_FOR_WRITING,
    WRITE_BUFFER_HIGH,
    WRITE_BUFFER_LOW,
    KmsConnection,
)
from kmsgate.server.host import KmsHost, ipv6_available
from tests.adversarial.host_attack import (
    Answer,
    BlockingKmsConnection,
    Fields,
    PduReader,
    answer_of,
    bind_pdu,
    request_pdu,
)
from tests.support.kms import RawClient, activate_once, make_request, read_until_closed
from tests.support.ports import free_port
from tests.support.stall import stall_writer as _stall

pytestmark = pytest.mark.integration


def settings(**overrides: object) -> ServeSettings:
    base: dict[str, object] = {"listen": ["127.0.0.1:0"], "idle_timeout": 5.0}
    base.update(overrides)
    return ServeSettings(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("version", [4, 5, 6])
async def test_activation_over_tcp_for_each_version(version: int) -> None:
    async with KmsHost(settings()) as host:
        result = await activate_once(host.port, version)
        assert result.ok
        assert result.response.current_client_count == 10
        assert (result.hwid is not None) == (version == 6)
        await asyncio.sleep(0.05)
        assert host.stats.activations == 1
        assert host.stats.by_version == {version: 1}


async def test_same_product_gets_the_same_epid_for_the_whole_run() -> None:
    async with KmsHost(settings()) as host:
        first = await activate_once(host.port)
        second = await activate_once(host.port, 4)
        assert first.response.epid == second.response.epid
        assert first.response.epid.split("-")[6].startswith(str(host.identity.host_build.build))


async def test_configured_identity_is_answered() -> None:
    epid = "06401-00206-271-298329-03-1033-9600.0000-0452017"
    config = settings(epid=epid, hwid="0102030405060708", client_count=77, renewal_interval=4320)
    async with KmsHost(config) as host:
        result = await activate_once(host.port)
        assert result.response.epid == epid
        assert result.hwid == bytes.fromhex("0102030405060708")
        assert result.response.current_client_count == 77
        assert result.response.renewal_interval == 4320


async def test_per_request_epid_mode_varies() -> None:
    async with KmsHost(settings(epid="per-request")) as host:
        epids = {(await activate_once(host.port)).response.epid for _ in range(4)}
        assert len(epids) > 1


async def test_many_requests_on_one_connection() -> None:
    async with KmsHost(settings()) as host:
        client = await RawClient.connect(host.port)
        await client.bind()
        syntaxes = []
        for version in (6, 5, 4, 6):
            assert (await client.activate(version)).ok
            syntaxes.append(client.session.syntax)
        await client.close()
        assert syntaxes == [TransferSyntax.NDR32] + [TransferSyntax.NDR64] * 3


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 on this machine")
async def test_ipv6_listener() -> None:
    async with KmsHost(settings(listen=["[::1]:0"])) as host:
        client = await RawClient.connect(host.port, "::1")
        await client.bind()
        assert (await client.activate()).ok
        await client.close()


async def test_five_hundred_idle_connections_do_not_block_an_activation() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    async with KmsHost(settings(idle_timeout=60.0)) as host:
        # From ten loopback addresses: the default per-source cap (64) would refuse the rest.
        idle = [
            await asyncio.open_connection(
                "127.0.0.1", host.port, local_addr=(f"127.0.1.{index % 10 + 1}", 0)
            )
            for index in range(500)
        ]
        await asyncio.sleep(0.1)
        assert host.stats.connections_open == 500
        assert (await activate_once(host.port)).ok
        for _, writer in idle:
            writer.close()
        await asyncio.sleep(0.2)
        assert host.stats.connections_open == 0


async def test_max_connections_refuses_extra_clients_and_keeps_serving() -> None:
    async with KmsHost(settings(max_connections=3)) as host:
        held = [await asyncio.open_connection("127.0.0.1", host.port) for _ in range(3)]
        reader, _ = await asyncio.open_connection("127.0.0.1", host.port)
        assert await read_until_closed(reader) == b""
        assert host.stats.connections_rejected == 1
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0.1)
        assert (await activate_once(host.port)).ok


async def test_a_reload_keeps_the_connection_caps_a_restart_would_change() -> None:
    """docs/operations.md: a reload applies the policies and logging, not the limits."""
    async with KmsHost(settings(max_connections=3, max_connections_per_source=3)) as host:
        host.apply_policies(settings(max_connections=1, max_connections_per_source=1))
        held = [await asyncio.open_connection("127.0.0.1", host.port) for _ in range(3)]
        async with asyncio.timeout(10):
            while host.stats.connections_accepted < 3:
                await asyncio.sleep(0.01)
        reader, _ = await asyncio.open_connection("127.0.0.1", host.port)
        assert await read_until_closed(reader) == b""
        assert host.stats.connections_rejected + host.stats.connections_source_limited == 1
        for _, writer in held:
            writer.close()


async def test_idle_client_is_closed_after_the_timeout() -> None:
    async with KmsHost(settings(idle_timeout=0.3)) as host:
        reader, _ = await asyncio.open_connection("127.0.0.1", host.port)
        assert await read_until_closed(reader, timeout=3) == b""
        assert host.stats.idle_closes == 1


async def test_an_idle_close_names_the_timeout_it_enforced_after_a_reload(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with KmsHost(settings(idle_timeout=1.0)) as host:
        host.apply_policies(settings(idle_timeout=99.0))  # needs a restart to apply
        reader, _ = await asyncio.open_connection("127.0.0.1", host.port)
        with caplog.at_level(logging.DEBUG, logger="kmsgate.server"):
            assert await read_until_closed(reader, timeout=5) == b""
        assert host.stats.idle_closes == 1
    [line] = [r.getMessage() for r in caplog.records if "without a KMS request" in r.getMessage()]
    assert "closed after 1 s without a KMS request" in line


async def test_slow_client_dribbling_bytes_is_closed() -> None:
    async with KmsHost(settings(idle_timeout=0.4)) as host:
        client = await RawClient.connect(host.port)
        bind = client.bind_pdu()
        closed = False
        for byte in bind[:-1]:  # never completes the PDU
            try:
                client.writer.write(bytes([byte]))
                await client.writer.drain()
            except ConnectionError:
                closed = True
                break
            await asyncio.sleep(0.02)
            if client.reader.at_eof():
                closed = True
                break
        if not closed:
            assert await read_until_closed(client.reader, timeout=3) == b""
        assert host.stats.idle_closes == 1


GARBAGE = [
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http"),
    pytest.param(bytes.fromhex("05000b0310000000ffff000002000000"), id="oversized"),
    pytest.param(bytes.fromhex("05000b03100000000800000002000000"), id="frag<16"),
    pytest.param(bytes.fromhex("05000103100000001000000002000000"), id="ptype1"),
    pytest.param(bytes.fromhex("04000b03100000001000000002000000"), id="rpc-v4"),
    pytest.param(bytes.fromhex("05000b03000000001000000002000000"), id="big-endian"),
]


@pytest.mark.parametrize("payload", GARBAGE)
async def test_garbage_is_closed_without_answer_and_host_keeps_serving(payload: bytes) -> None:
    async with KmsHost(settings()) as host:
        reader, writer = await asyncio.open_connection("127.0.0.1", host.port)
        writer.write(payload)
        assert await read_until_closed(reader) == b""
        assert host.stats.protocol_closes == 1
        assert (await activate_once(host.port)).ok


async def test_truncated_pdu_then_close_does_not_disturb_the_host() -> None:
    async with KmsHost(settings()) as host:
        client = await RawClient.connect(host.port)
        client.writer.write(client.bind_pdu()[:40])
        await client.close()
        assert (await activate_once(host.port)).ok


async def _bound_client(port: int) -> RawClient:
    client = await RawClient.connect(port)
    await client.bind()
    return client


async def test_wrong_context_gets_a_fault_and_the_connection_stays_usable() -> None:
    async with KmsHost(settings()) as host:
        client = await _bound_client(host.port)
        message = encode_request(make_request(), bytes(16))
        stub = ndr.wrap_request(message, TransferSyntax.NDR32)
        client.writer.write(rpc.encode_pdu(rpc.Request(9, 7, 0, stub)))
        fault = rpc.decode_pdu(await client.read_pdu())
        assert isinstance(fault, rpc.Fault)
        assert (fault.status, fault.call_id) == (rpc.NCA_UNK_IF, 9)
        assert (await client.activate()).ok
        await client.close()
        assert host.stats.faults == 1


async def test_unknown_opnum_gets_op_range_fault() -> None:
    async with KmsHost(settings()) as host:
        client = await _bound_client(host.port)
        stub = ndr.wrap_request(encode_request(make_request(), bytes(16)), TransferSyntax.NDR32)
        client.writer.write(rpc.encode_pdu(rpc.Request(3, 0, 5, stub)))
        fault = rpc.decode_pdu(await client.read_pdu())
        assert isinstance(fault, rpc.Fault) and fault.status == rpc.NCA_OP_RNG_ERROR
        await client.close()


@pytest.mark.parametrize(
    ("mutate", "hresult"),
    [
        pytest.param(lambda m: m[:2] + b"\x07\x00" + m[4:], 0x8007000D, id="version-7"),
        pytest.param(lambda m: m[:100], 0x8007000D, id="truncated"),
        pytest.param(lambda m: m[:-1] + bytes([m[-1] ^ 1]), 0x8007000D, id="bad-v4-mac"),
    ],
)
async def test_bad_kms_messages_get_an_error_stub(mutate, hresult: int) -> None:  # type: ignore[no-untyped-def]
    async with KmsHost(settings()) as host:
        client = await _bound_client(host.port)
        message = mutate(encode_request(make_request(4), bytes(16)))
        stub = ndr.wrap_request(message, TransferSyntax.NDR32)
        client.writer.write(rpc.encode_pdu(rpc.Request(2, 0, 0, stub)))
        response = rpc.decode_pdu(await client.read_pdu())
        assert isinstance(response, rpc.Response)
        result = ndr.unwrap_response(response.stub, TransferSyntax.NDR32)
        assert (result.message, result.hresult) == (None, hresult)
        assert host.stats.refusals == 1
        await client.close()


async def test_each_activation_is_logged_on_one_compact_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kmsgate.activation")
    async with KmsHost(settings()) as host:
        await activate_once(host.port, 5)
    lines = [r.getMessage() for r in caplog.records if r.name == "kmsgate.activation"]
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("127.0.0.1:")
    assert "test-pc.example.test" in line
    assert '"Windows Server 2019 Datacenter"' in line
    assert "oob-grace" in line and "v5.0" in line and "activated" in line
    assert "\n" not in line


async def test_graceful_stop_closes_idle_connections() -> None:
    host = KmsHost(settings())
    await host.start()
    reader, _ = await asyncio.open_connection("127.0.0.1", host.port)
    await host.stop(drain_timeout=0.2)
    assert await read_until_closed(reader) == b""
    assert not host.connections


@pytest.mark.parametrize(
    "policy",
    [{"allow": ["10.0.0.0/8"]}, {"deny": ["127.0.0.0/8"]}],
    ids=["not-allowed", "denied"],
)
async def test_source_policy_closes_before_reading_rpc(policy: dict[str, list[str]]) -> None:
    async with KmsHost(settings(**policy)) as host:
        client = await RawClient.connect(host.port)
        client.writer.write(client.bind_pdu())
        assert await read_until_closed(client.reader) == b""
        assert host.stats.connections_denied == 1
        assert host.stats.connections_accepted == 0


async def test_unknown_products_are_activated_and_logged_as_unknown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kmsgate.activation")
    sku = uuid.uuid4()
    request = dataclasses.replace(make_request(6), sku_id=sku, kms_counted_id=uuid.uuid4())
    async with KmsHost(settings()) as host:
        client = await RawClient.connect(host.port)
        await client.bind()
        result = await client.activate(request=request)
        await client.close()
    assert result.ok
    assert result.response.current_client_count == 10
    lines = [r.getMessage() for r in caplog.records if r.name == "kmsgate.activation"]
    assert len(lines) == 1 and f'"unknown ({sku})"' in lines[0] and "activated" in lines[0]


# --- backpressure, records before answers, per-connection limits (issue 11 H2-H4, S3) ------


def _flood(count: int) -> bytes:
    """A bind and `count` pipelined v4 requests (distinct machines)."""
    return bind_pdu() + b"".join(
        request_pdu(call_id, Fields(version=4).message()) for call_id in range(3, count + 3)
    )


async def _read_answers(reader: asyncio.StreamReader, count: int) -> list[Answer]:
    pdus, answers = PduReader(), []
    async with asyncio.timeout(30):
        while len(answers) < count:
            data = await reader.read(1 << 16)
            if not data:
                break
            answers += [a for pdu in pdus.feed(data) if (a := answer_of(pdu)) is not None]
    return answers


async def test_a_client_that_does_not_read_its_answers_stops_being_read() -> None:
    total = 60_000  # 17 MB of requests, 14 MB of answers: more than the kernel buffers hold
    async with KmsHost(settings(max_requests_per_connection=0)) as host:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", host.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(_flood(total))
        async with asyncio.timeout(30):
            while not host.connections:
                await asyncio.sleep(0.01)
            [conn] = host.connections
            assert isinstance(conn, KmsConnection)
            while not conn._paused_for & _PAUSED_FOR_WRITING:
                await asyncio.sleep(0.01)
        served = host.stats.activations
        await asyncio.sleep(0.5)  # would it read on? it must not
        assert host.stats.activations == served < total
        transport = conn._transport
        assert transport is not None
        # At most one read (256 KiB of requests) past the high-water mark, not megabytes.
        assert transport.get_write_buffer_size() <= WRITE_BUFFER_HIGH + 300 * 1024
        answers = await _read_answers(reader, total)  # reading resumes: everything comes
        assert len(answers) == total and all(a.served for a in answers)
        assert host.stats.activations == total
        writer.close()


async def _buffer_limits_of_a_served_connection() -> tuple[int, int]:
    async with KmsHost(settings()) as host:
        _, writer = await asyncio.open_connection("127.0.0.1", host.port)
        async with asyncio.timeout(10):
            while not host.connections:
                await asyncio.sleep(0.01)
        [conn] = host.connections
        assert isinstance(conn, KmsConnection) and conn._transport is not None
        limits = conn._transport.get_write_buffer_limits()
        writer.close()
        return limits


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_connection_pauses_at_the_write_buffer_marks_it_names(loop: str) -> None:
    """On both loops: uvloop's own low-water mark (16 bytes) is not the host's."""
    factory = pytest.importorskip("uvloop").new_event_loop if loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        limits = runner.run(_buffer_limits_of_a_served_connection())
    assert limits == (WRITE_BUFFER_LOW, WRITE_BUFFER_HIGH)


@pytest.mark.parametrize("writer_kind", ["process", "inline"])
async def test_answers_wait_until_their_records_are_handed_over(
    tmp_path: Path, writer_kind: str
) -> None:
    """A store that takes nothing more holds the answers; they leave once it takes them."""
    config = ServeSettings.model_validate(
        {
            "listen": ["127.0.0.1:0"],
            "db": f"sqlite:///{tmp_path / 'kms.db'}",
            "data_dir": tmp_path,
            "no_web": True,
            "store_queue": 4,
            "store_flush_interval": 0.01,
            "store_writer": writer_kind,
        }
    )
    async with Node(config) as service:
        assert service.host is not None and service.writer is not None
        writer = service.writer
        stuck = _stall(writer)
        connection = await asyncio.to_thread(BlockingKmsConnection, service.host.port)
        try:
            await asyncio.to_thread(connection.bind)
            first = [
                await asyncio.to_thread(connection.ask, Fields(version=4).message())
                for _ in range(4)
            ]
            assert all(a.served for a in first)  # the queue had room for these
            fifth = asyncio.ensure_future(
                asyncio.to_thread(connection.ask, Fields(version=6).message())
            )
            await asyncio.sleep(0.5)
            assert not fifth.done()  # its record has no room: its answer waits with it
            assert service.host.stats.activations == 5 and writer.dropped == 0
            stuck.release()
            assert (await asyncio.wait_for(fifth, 15)).served
        finally:
            connection.close()
        async with asyncio.timeout(15):
            while writer.written < 5:
                await asyncio.sleep(0.02)
        assert (writer.written, writer.dropped) == (5, 0)


async def test_binds_alone_do_not_keep_a_connection_open() -> None:
    async with KmsHost(settings(idle_timeout=0.5)) as host:
        client = await RawClient.connect(host.port)
        closed = False
        async with asyncio.timeout(10):
            while not closed:
                try:
                    await client.bind()  # a valid bind (and alter_context) every 0.1 s
                except (ConnectionError, asyncio.IncompleteReadError):
                    closed = True
                    break
                client.session = type(client.session)()
                await asyncio.sleep(0.1)
        assert host.stats.idle_closes == 1


async def test_requests_keep_a_connection_open_past_the_idle_timeout() -> None:
    async with KmsHost(settings(idle_timeout=0.4)) as host:
        client = await _bound_client(host.port)
        for _ in range(8):  # 1.6 s in all, four idle timeouts
            assert (await client.activate()).ok
            await asyncio.sleep(0.2)
        await client.close()
        assert host.stats.idle_closes == 0


async def test_the_lifetime_closes_a_busy_connection() -> None:
    async with KmsHost(settings(connection_lifetime=0.5, idle_timeout=30)) as host:
        client = await _bound_client(host.port)
        answered = 0
        async with asyncio.timeout(10):
            while True:
                try:
                    assert (await client.activate()).ok
                except ConnectionError:
                    break
                answered += 1
                await asyncio.sleep(0.05)
        assert answered >= 1
        assert (host.stats.lifetime_closes, host.stats.idle_closes) == (1, 0)
        assert host.stats.activations == answered


async def test_the_request_cap_closes_after_the_last_answer() -> None:
    async with KmsHost(settings(max_requests_per_connection=3)) as host:
        client = await _bound_client(host.port)
        for _ in range(3):
            assert (await client.activate()).ok
        with pytest.raises(ConnectionError):
            await client.activate()
        assert host.stats.request_limit_closes == 1
        # Pipelined past the cap: what was read with the last allowed request is still
        # answered (and counted), then the connection ends.
        reader, writer = await asyncio.open_connection("127.0.0.1", host.port)
        writer.write(_flood(10))
        answers = await _read_answers(reader, 10)
        assert await reader.read() == b""
        assert len(answers) >= 3 and all(a.served for a in answers)
        assert host.stats.activations == 3 + len(answers)
        writer.close()


async def test_the_per_source_cap_refuses_one_address_not_the_others() -> None:
    async with KmsHost(settings(max_connections_per_source=2)) as host:
        held = [
            await asyncio.open_connection("127.0.0.1", host.port, local_addr=("127.0.0.2", 0))
            for _ in range(2)
        ]
        for _ in range(3):  # refused each time, with one warning, not three
            reader, _ = await asyncio.open_connection(
                "127.0.0.1", host.port, local_addr=("127.0.0.2", 0)
            )
            assert await read_until_closed(reader) == b""
        assert host.stats.connections_source_limited == 3
        rejected = host.metrics.registry.get_sample_value(
            "kmsgate_connections_total", {"outcome": "rejected_source_limit"}
        )
        assert rejected == 3
        other = await RawClient.connect(host.port, "127.0.0.1")  # another source still gets in
        await other.bind()
        assert (await other.activate()).ok
        await other.close()
        held[0][1].close()
        async with asyncio.timeout(5):
            while host.stats.connections_open > 1:
                await asyncio.sleep(0.02)
        again = await asyncio.to_thread(BlockingKmsConnection, host.port, source="127.0.0.2")
        await asyncio.to_thread(again.bind)  # its slot was given back
        assert (await asyncio.to_thread(again.ask, Fields(version=5).message())).served
        again.close()
        held[1][1].close()


async def test_a_failing_hook_does_not_keep_the_event_from_the_next_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []

    def broken(peer: str, event: object) -> None:
        raise ValueError("year 60056 is out of range")

    async with KmsHost(settings()) as host:
        host.event_hooks[:0] = [broken]
        host.event_hooks.append(lambda peer, event: seen.append(type(event).__name__))
        assert (await activate_once(host.port)).ok
        assert (await activate_once(host.port)).ok  # the host goes on serving
    assert seen.count("ActivationServed") == 2 and host.stats.activations == 2
    assert any("event hook" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_each_connection_gets_its_own_association_group() -> None:
    """Non-zero, and different per connection (a seeded PRNG, not one id for all)."""
    groups = []
    async with KmsHost(settings()) as host:
        for _ in range(20):
            client = await RawClient.connect(host.port)
            client.writer.write(client.bind_pdu())
            ack = await client.read_pdu()
            assert ack[2] == rpc.PType.BIND_ACK
            groups.append(int.from_bytes(ack[20:24], "little"))
            client.writer.close()
    assert 0 not in groups and len(set(groups)) == 20


async def test_a_finished_connection_is_freed_without_the_garbage_collector() -> None:
    # The idle timer holds a bound method of its connection: unless connection_lost drops
    # it, each connection (its session, framer and transport with it) waits for the
    # collector, which then runs a young-generation pass every few dozen connections.
    async with KmsHost(settings()) as host:
        assert (await activate_once(host.port)).ok
        gc.collect()
        gc.disable()
        try:
            for _ in range(20):
                assert (await activate_once(host.port)).ok
            async with asyncio.timeout(5):
                while host.connections:
                    await asyncio.sleep(0.01)
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            left = [obj for obj in gc.garbage if isinstance(obj, KmsConnection | ServerSession)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        assert left == []
        assert host.stats.activations == 21


async def _secondary_address(port: int) -> str:
    client = await RawClient.connect(port)
    try:
        client.writer.write(client.bind_pdu())
        ack = rpc.decode_pdu(await client.read_pdu())
    finally:
        await client.close()
    assert isinstance(ack, rpc.BindAck)
    return ack.secondary_address


async def test_the_bind_ack_names_the_listening_port() -> None:
    # A listener with a fixed port hands it to its connections; one on port 0 (and a second
    # listener) learn theirs from the socket: every bind_ack names the port it came in on.
    fixed = free_port()
    async with KmsHost(settings(listen=[f"127.0.0.1:{fixed}", "127.0.0.1:0"])) as host:
        ports = [port for _, port in host.addresses]
        assert fixed in ports and len(ports) == 2
        for port in ports:
            assert await _secondary_address(port) == str(port)
