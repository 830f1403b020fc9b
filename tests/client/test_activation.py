"""The asyncio client against our own host, against lying fake hosts, and the load generator."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest

from kmsgate.catalog import Sku, default_catalog
from kmsgate.client.activation import KmsClient, activate_first_reachable
from kmsgate.client.errors import (
    ConnectionClosedError,
    KmsConnectionError,
    KmsTimeoutError,
    NoHostReachableError,
    ResponseVerificationError,
    describe_error,
)
from kmsgate.client.exchange import RequestTemplate, random_machine_name
from kmsgate.client.loadgen import LoadSettings, error_key, percentile, run_load
from kmsgate.config.settings import ServeSettings
from kmsgate.protocol import crypto, ndr, rpc
from kmsgate.protocol.engine import EngineConfig, KmsEngine, filetime_from_unix
from kmsgate.protocol.errors import (
    ActivationError,
    ProtocolError,
    RpcFaultError,
    VerificationError,
)
from kmsgate.protocol.hresult import HResult
from kmsgate.protocol.messages import (
    DecodedRequest,
    KmsRequest,
    KmsResponse,
    decode_request,
    encode_response,
)
from kmsgate.protocol.ndr import TransferSyntax
from kmsgate.protocol.session import ServerSession, SessionSettings
from kmsgate.server.host import KmsHost, ipv6_available
from tests.support.ports import closed_port

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"
EPID = "03612-00206-556-123727-03-1033-17763.0000-2972018"
HWID = bytes.fromhex("3A1C049600B60076")
OFFICE_2013_PLUS = uuid.UUID("0ff1ce15-a989-479d-af46-f275c6370663")

PRODUCTS = {
    "windows": "Windows 10/11 Pro",  # client: N-count 25
    "server": "Windows Server 2022 Standard",  # server: N-count 5
    "office": "Office Professional Plus 2019",  # Office 2013+ application, N-count 5
}
CHECKS = {
    4: {"version", "time_stamp", "client_machine_id", "client_count", "mac", "size"},
    5: {"version", "time_stamp", "client_machine_id", "client_count", "hash", "ivs", "size"},
    6: {
        "version",
        "time_stamp",
        "client_machine_id",
        "client_count",
        "hash",
        "ivs",
        "iv_not_suspicious",
        "hmac",
        "size",
    },
}


def sku(kind: str) -> Sku:
    return default_catalog().resolve_product(PRODUCTS[kind])


def client_for(kind: str = "windows", *, protocol: int | None = None, **kwargs: Any) -> KmsClient:
    kwargs.setdefault("timeout", 3.0)
    return KmsClient(RequestTemplate.from_sku(sku(kind), protocol=protocol), **kwargs)


@asynccontextmanager
async def kms_host(**settings: Any) -> AsyncIterator[KmsHost]:
    """Our own host on an ephemeral loopback port."""
    settings.setdefault("listen", [f"{LOOPBACK}:0"])
    async with KmsHost(ServeSettings(**settings)) as host:
        yield host


# ---------------------------------------------------------------------------------------
# Request building
# ---------------------------------------------------------------------------------------


def test_template_from_catalogue_sku() -> None:
    windows, office = sku("windows"), sku("office")
    template = RequestTemplate.from_sku(windows)
    assert (template.major_version, template.required_client_count) == (6, 25)
    assert template.application_id == windows.application_id
    assert template.kms_counted_id == windows.kms_id
    assert template.sku_id == windows.id
    assert (template.license_status, template.grace_time) == (2, 43200)
    office_template = RequestTemplate.from_sku(office, protocol=4)
    assert office_template.major_version == 4
    assert office_template.required_client_count == 5
    assert office_template.application_id == OFFICE_2013_PLUS


def test_request_uses_injected_randomness_and_clock() -> None:
    now = 1_700_000_000.0

    def build() -> tuple[KmsRequest, bytes]:
        rng = random.Random(7)
        client = client_for(random_bytes=rng.randbytes, clock=lambda: now)
        return client.new_request()

    (first, message), (again, message_again) = build(), build()
    assert first == again and message == message_again
    assert first.request_time == filetime_from_unix(now)
    assert first.client_machine_id.version == 4
    assert decode_request(message).request == first
    # Not injected: two requests differ in CMID, name and IV.
    client = client_for()
    (a, msg_a), (b, msg_b) = client.new_request(), client.new_request()
    assert a.client_machine_id != b.client_machine_id
    assert msg_a[4:20] != msg_b[4:20]


def test_fixed_cmid_and_machine_name() -> None:
    cmid = uuid.UUID("5d7f9b13-c4e6-4081-8c2d-3e4f5a6b7c8d")
    template = RequestTemplate.from_sku(
        sku("server"), client_machine_id=cmid, machine_name="srv2019-dc.example.com"
    )
    request, _ = KmsClient(template).new_request()
    assert request.client_machine_id == cmid
    assert request.machine_name == "srv2019-dc.example.com"


def test_template_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="4, 5 or 6"):
        RequestTemplate.from_sku(sku("windows"), protocol=7)
    with pytest.raises(ValueError, match="63"):
        RequestTemplate.from_sku(sku("windows"), machine_name="x" * 64)


def test_random_machine_name_is_dns_like() -> None:
    rng = random.Random(3)
    for _ in range(200):
        name = random_machine_name(rng.randbytes)
        labels = name.split(".")
        assert len(labels) == 3
        assert all(label and label[0].isalpha() and label.isalnum() for label in labels)
        assert name == name.lower()
        assert len(name) < 64


# ---------------------------------------------------------------------------------------
# Own client against own host: versions x NDR64 x BTFN x products
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(PRODUCTS))
@pytest.mark.parametrize("version", [4, 5, 6])
@pytest.mark.parametrize("server_ndr64", [True, False], ids=["srv64", "srv32"])
@pytest.mark.parametrize("client_ndr64", [True, False], ids=["cli64", "cli32"])
@pytest.mark.parametrize(
    ("server_btfn", "client_btfn"),
    [(True, True), (True, False), (False, True), (False, False)],
    ids=["btfn", "srv-btfn-only", "cli-btfn-only", "no-btfn"],
)
async def test_matrix(
    kind: str,
    version: int,
    server_ndr64: bool,
    client_ndr64: bool,
    server_btfn: bool,
    client_btfn: bool,
) -> None:
    product = sku(kind)
    async with kms_host(ndr64=server_ndr64, btfn=server_btfn, hwid=HWID.hex()) as host:
        client = client_for(kind, protocol=version, ndr64=client_ndr64, btfn=client_btfn)
        port = host.port
        results = await client.activate(LOOPBACK, port, count=2)
        assert host.stats.activations == 2
        assert host.stats.connections_accepted == 1
        assert host.stats.by_version == {version: 2}

    first, second = results
    assert [r.call_id for r in results] == [2, 3]
    assert first.syntax is TransferSyntax.NDR32
    ndr64 = client_ndr64 and server_ndr64
    assert second.syntax is (TransferSyntax.NDR64 if ndr64 else TransferSyntax.NDR32)
    for result in results:
        request, response = result.request, result.response
        assert (request.application_id, request.sku_id) == (product.application_id, product.id)
        assert request.kms_counted_id == product.kms_id
        assert request.required_client_count == product.n_count_policy
        assert request.major_version == response.major_version == version
        assert response.client_machine_id == request.client_machine_id
        assert response.response_time == request.request_time
        assert response.current_client_count == 2 * product.n_count_policy
        assert (response.activation_interval, response.renewal_interval) == (120, 10080)
        assert response.epid == host.identity.epid_for(request)
        assert result.hwid == (HWID if version == 6 else None)
        assert {c.name for c in result.checks} == CHECKS[version]
        assert all(c.passed for c in result.checks), result.checks
        assert result.ok
        assert (result.host, result.port) == (LOOPBACK, port)
    # A client offering BTFN to a host that ignores it is told so (once per connection, with
    # the first result), and only then.
    if client_btfn and not server_btfn:
        assert any("BTFN" in w for w in first.warnings)
    else:
        assert first.warnings == ()
    assert second.warnings == ()
    assert first.connect_latency is not None and second.connect_latency is None
    assert first.request.client_machine_id != second.request.client_machine_id


async def test_many_requests_on_one_connection_increment_call_ids() -> None:
    async with kms_host() as host:
        results = await client_for().activate(LOOPBACK, host.port, count=5)
        assert host.stats.connections_accepted == 1
    assert [r.call_id for r in results] == [2, 3, 4, 5, 6]
    assert [r.syntax.value for r in results] == ["NDR32"] + ["NDR64"] * 4
    assert len({r.request.client_machine_id for r in results}) == 5


async def test_fresh_connection_per_request() -> None:
    async with kms_host() as host:
        results = await client_for().activate(LOOPBACK, host.port, count=3, fresh_connections=True)
        assert host.stats.connections_accepted == 3
        assert host.stats.activations == 3
    assert [r.call_id for r in results] == [2, 2, 2]
    assert all(r.syntax is TransferSyntax.NDR32 for r in results)
    assert all(r.connect_latency is not None for r in results)


async def test_connection_reports_negotiation() -> None:
    async with kms_host(ndr64=True, btfn=True) as host:
        conn = await client_for().connect(LOOPBACK, host.port)
        async with conn:
            info = conn.bind_info
            assert (info.ndr32, info.ndr64, info.btfn_bits) == (True, True, 3)
            result = await client_for().activate_on(conn)
            assert result.ok


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback on this machine")
async def test_ipv6_loopback() -> None:
    async with kms_host(listen=["[::1]:0"]) as host:
        (result,) = await client_for().activate("::1", host.port)
    assert result.ok and result.host == "::1"


async def test_host_refusing_a_product_raises_activation_error() -> None:
    async with kms_host() as host:

        def no_office(request: KmsRequest) -> HResult | None:
            refuse = request.application_id == OFFICE_2013_PLUS
            return HResult.PRODUCT_NOT_ALLOWED if refuse else None

        host.engine = KmsEngine(host.engine.config, host.identity.provider, no_office)
        with pytest.raises(ActivationError) as caught:
            await client_for("office").activate(LOOPBACK, host.port)
        assert caught.value.hresult == 0xC004F042
        assert "cannot activate this product" in str(caught.value)
        assert describe_error(caught.value) == (
            "host returned 0xC004F042 (the KMS host cannot activate this product)"
        )
        # The same host still activates Windows.
        (result,) = await client_for("windows").activate(LOOPBACK, host.port)
        assert result.ok
        assert (host.stats.refusals, host.stats.activations) == (1, 1)


async def test_clock_skew_refusal_from_real_host() -> None:
    async with kms_host(max_clock_skew=3600) as host:
        skewed = client_for(clock=lambda: 1_000_000_000.0)  # 2001: far outside the window
        with pytest.raises(ActivationError) as caught:
            await skewed.activate(LOOPBACK, host.port)
    assert caught.value.hresult == HResult.TIME_SKEW


async def test_insufficient_client_count_is_rejected() -> None:
    async with kms_host(client_count=3) as host:
        with pytest.raises(ResponseVerificationError) as caught:
            await client_for("windows").activate(LOOPBACK, host.port)
        assert caught.value.check == "client_count"
        assert caught.value.result.response.current_client_count == 3
        # Non-strict mode hands the failed result back instead.
        (result,) = await client_for("windows").activate(LOOPBACK, host.port, strict=False)
    assert not result.ok
    assert [c.name for c in result.checks if not c.passed] == ["client_count"]


# ---------------------------------------------------------------------------------------
# A fake host that lies
# ---------------------------------------------------------------------------------------

Answer = Callable[[rpc.Request, TransferSyntax, bytes], bytes]


@asynccontextmanager
async def fake_host(answer: Answer | None, *, bind: bool = True) -> AsyncIterator[int]:
    """A loopback host binding like ours but answering requests with `answer` (b"" = silence).

    `answer` None and `bind` False gives a host that accepts and then never says anything.
    """
    bind_engine = KmsEngine(EngineConfig(), lambda _request: EPID)
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        session = ServerSession(
            bind_engine, SessionSettings(hwid=HWID), random_bytes=os.urandom, assoc_group_id=7
        )
        try:
            while True:
                header = await reader.readexactly(rpc.HEADER_SIZE)
                length = rpc.parse_header(header).frag_length
                raw = header + await reader.readexactly(length - rpc.HEADER_SIZE)
                pdu = rpc.decode_pdu(raw)
                if isinstance(pdu, rpc.Bind):
                    if bind:
                        session.receive_data(raw, 0)
                        writer.write(session.data_to_send())
                elif isinstance(pdu, rpc.Request) and answer is not None:
                    syntax = TransferSyntax.NDR64 if pdu.context_id == 1 else TransferSyntax.NDR32
                    writer.write(answer(pdu, syntax, ndr.unwrap_request(pdu.stub, syntax)))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, LOOPBACK, 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


def respond(
    make: Callable[[DecodedRequest, KmsResponse], bytes] | None = None,
    *,
    response_fields: dict[str, Any] | None = None,
    call_id_offset: int = 0,
) -> Answer:
    """An answer function: a genuine response, optionally with changed fields or bytes."""

    def answer(request: rpc.Request, syntax: TransferSyntax, message: bytes) -> bytes:
        decoded = decode_request(message)
        response = KmsResponse(
            major_version=decoded.major_version,
            epid=EPID,
            client_machine_id=decoded.request.client_machine_id,
            response_time=decoded.request.request_time,
            current_client_count=50,
            activation_interval=120,
            renewal_interval=10080,
        )
        if response_fields:
            response = replace(response, **response_fields)
        if make is None:
            reply = encode_response(decoded, response, random_bytes=os.urandom, hwid=HWID)
        else:
            reply = make(decoded, response)
        stub = ndr.wrap_response(reply, syntax)
        return rpc.encode_pdu(
            rpc.Response(request.call_id + call_id_offset, request.context_id, stub)
        )

    return answer


def genuine(decoded: DecodedRequest, response: KmsResponse) -> bytes:
    return encode_response(decoded, response, random_bytes=os.urandom, hwid=HWID)


def reencrypted(mutate: Callable[[bytearray, DecodedRequest, KmsResponse], None]) -> Any:
    """A v5/v6 response decrypted, changed by `mutate`, and encrypted again."""

    def make(decoded: DecodedRequest, response: KmsResponse) -> bytes:
        message = genuine(decoded, response)
        cipher = crypto.cipher_for_version(decoded.major_version)
        plain = bytearray(crypto.pkcs7_unpad(cipher.cbc_decrypt(bytes(16), message[4:])))
        mutate(plain, decoded, response)
        return message[:4] + cipher.cbc_encrypt(bytes(16), crypto.pkcs7_pad(bytes(plain)))

    return make


def flipped(offset: int, bit: int = 0x01) -> Any:
    """A genuine response with one bit of its wire bytes flipped (negative offsets allowed)."""

    def make(decoded: DecodedRequest, response: KmsResponse) -> bytes:
        message = bytearray(genuine(decoded, response))
        message[offset] ^= bit
        return bytes(message)

    return make


def flip_hmac(plain: bytearray, _decoded: DecodedRequest, _response: KmsResponse) -> None:
    plain[-1] ^= 0x01


def flip_xor_salts(plain: bytearray, _decoded: DecodedRequest, _response: KmsResponse) -> None:
    plain[-32] ^= 0x01  # XorSalts precede the 16-byte HMAC


def flip_random_xor_salt(plain: bytearray, _d: DecodedRequest, response: KmsResponse) -> None:
    at = 16 + len(response.to_bytes())
    plain[at] ^= 0x01


def flip_v5_response_iv(plain: bytearray, _decoded: DecodedRequest, _r: KmsResponse) -> None:
    plain[0] ^= 0x01


def response_iv_equals_salt(plain: bytearray, decoded: DecodedRequest, r: KmsResponse) -> None:
    """What an emulator following v5 rules sends in v6: ResponseIV == salt, HMAC still right."""
    assert decoded.salt is not None
    plain[0:16] = decoded.salt
    plain[-16:] = crypto.v6_hmac(r.response_time, bytes(plain[:-16]))


OTHER_CMID = uuid.UUID("11111111-2222-4333-8444-555555555555")

LIES = [
    # (id, protocol, answer, failing check)
    ("v6-last-block-flipped", 6, respond(flipped(-17)), "decryption"),
    ("v6-first-block-flipped", 6, respond(flipped(4 + 8)), "hmac"),
    ("v6-hmac-reencrypted", 6, respond(reencrypted(flip_hmac)), "hmac"),
    ("v6-xor-salts", 6, respond(reencrypted(flip_xor_salts)), "ivs"),
    ("v6-random-xor-salt", 6, respond(reencrypted(flip_random_xor_salt)), "hash"),
    (
        "v6-wrong-cmid-valid-hmac",
        6,
        respond(response_fields={"client_machine_id": OTHER_CMID}),
        "client_machine_id",
    ),
    (
        "v6-wrong-time-valid-hmac",
        6,
        respond(genuine, response_fields={"response_time": filetime_from_unix(1e9)}),
        "time_stamp",
    ),
    ("v6-low-count", 6, respond(response_fields={"current_client_count": 24}), "client_count"),
    ("v5-response-iv", 5, respond(reencrypted(flip_v5_response_iv)), "ivs"),
    ("v5-ciphertext-flipped", 5, respond(flipped(-17)), "decryption"),
    (
        "v5-wrong-cmid",
        5,
        respond(response_fields={"client_machine_id": OTHER_CMID}),
        "client_machine_id",
    ),
    ("v4-mac-flipped", 4, respond(flipped(-1)), "mac"),
    ("v4-cmid-flipped", 4, respond(flipped(-16 - 36)), "client_machine_id"),
    ("v4-version", 4, respond(response_fields={"minor_version": 1}), "version"),
]


@pytest.mark.parametrize(
    ("protocol", "answer", "check"),
    [lie[1:] for lie in LIES],
    ids=[lie[0] for lie in LIES],
)
async def test_strict_client_rejects_lying_host(protocol: int, answer: Answer, check: str) -> None:
    async with fake_host(answer) as port:
        with pytest.raises(VerificationError) as caught:
            await client_for(protocol=protocol).activate(LOOPBACK, port)
    assert caught.value.check == check
    assert describe_error(caught.value).startswith(f"check {check} failed")


async def test_genuine_fake_host_is_accepted() -> None:
    """The fake host is only a liar when told to (guards the tests above)."""
    async with fake_host(respond()) as port:
        for protocol in (4, 5, 6):
            results = await client_for(protocol=protocol).activate(LOOPBACK, port, count=2)
            assert all(r.ok and r.response.epid == EPID for r in results)


async def test_emulator_style_v6_iv_is_only_a_warning() -> None:
    async with fake_host(respond(reencrypted(response_iv_equals_salt))) as port:
        (result,) = await client_for(protocol=6).activate(LOOPBACK, port)
    assert result.ok
    failed = [c for c in result.checks if not c.passed]
    assert [(c.name, c.fatal) for c in failed] == [("iv_not_suspicious", False)]


async def test_wrong_call_id_is_a_protocol_error() -> None:
    async with fake_host(respond(call_id_offset=1)) as port:
        with pytest.raises(ProtocolError, match="call_id"):
            await client_for().activate(LOOPBACK, port)


def error_stub(hresult: int) -> Answer:
    def answer(request: rpc.Request, syntax: TransferSyntax, _message: bytes) -> bytes:
        stub = ndr.wrap_error(hresult, syntax)
        return rpc.encode_pdu(rpc.Response(request.call_id, request.context_id, stub))

    return answer


def fault(status: int) -> Answer:
    def answer(request: rpc.Request, _syntax: TransferSyntax, _message: bytes) -> bytes:
        return rpc.encode_pdu(rpc.Fault(request.call_id, status, context_id=request.context_id))

    return answer


@pytest.mark.parametrize("hresult", [0xC004F042, 0x8007000D, 0xC004F06C])
async def test_hresult_error_stub(hresult: int) -> None:
    async with fake_host(error_stub(hresult)) as port:
        with pytest.raises(ActivationError) as caught:
            await client_for().activate(LOOPBACK, port)
    assert caught.value.hresult == hresult
    assert f"0x{hresult:08X}" in str(caught.value)


async def test_rpc_fault() -> None:
    async with fake_host(fault(rpc.NCA_UNK_IF)) as port:
        with pytest.raises(RpcFaultError) as caught:
            await client_for().activate(LOOPBACK, port)
    assert caught.value.status == 0x1C010003
    assert describe_error(caught.value).startswith("RPC fault 0x1C010003 (nca_unk_if")


# ---------------------------------------------------------------------------------------
# Connection failures
# ---------------------------------------------------------------------------------------


async def test_connection_refused() -> None:
    port = closed_port()
    with pytest.raises(KmsConnectionError) as caught:
        await client_for().activate(LOOPBACK, port)
    error = caught.value
    assert not isinstance(error, KmsTimeoutError)
    assert error.errno == errno.ECONNREFUSED
    assert error.hresult == HResult.RPC_SERVER_UNAVAILABLE
    assert error.activation_hresult == HResult.NO_KMS_CONTACTED
    assert "connection refused" in describe_error(error)
    assert "0x800706BA" in describe_error(error)


async def test_timeout_when_host_never_answers_the_bind() -> None:
    async with fake_host(None, bind=False) as port:
        with pytest.raises(KmsTimeoutError, match="did not answer the bind"):
            await client_for(timeout=0.3).activate(LOOPBACK, port)


async def test_timeout_when_host_never_answers_the_request() -> None:
    async with fake_host(lambda *_: b"") as port:
        with pytest.raises(KmsTimeoutError, match="did not answer the request"):
            await client_for(timeout=0.3).activate(LOOPBACK, port)


async def test_host_closing_the_connection() -> None:
    async def close_at_once(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(close_at_once, LOOPBACK, 0)
    async with server:
        port = int(server.sockets[0].getsockname()[1])
        with pytest.raises(ConnectionClosedError):
            await client_for(timeout=2.0).activate(LOOPBACK, port)


async def test_first_reachable_endpoint_wins() -> None:
    dead = closed_port()
    async with kms_host() as host:
        port = host.port
        used, results, failures = await activate_first_reachable(
            client_for(), [(LOOPBACK, dead), (LOOPBACK, port)], count=2
        )
    assert used == (LOOPBACK, port)
    assert len(results) == 2 and all(r.ok for r in results)
    assert [where for where, _ in failures] == [f"{LOOPBACK}:{dead}"]


async def test_no_endpoint_reachable() -> None:
    with pytest.raises(NoHostReachableError) as caught:
        await activate_first_reachable(client_for(), [(LOOPBACK, closed_port())] * 2)
    assert len(caught.value.attempts) == 2
    assert caught.value.hresult == HResult.NO_KMS_CONTACTED


async def test_a_refusing_host_is_not_skipped() -> None:
    """Only connection failures move on to the next candidate; an answer is final."""
    async with fake_host(error_stub(0xC004F042)) as refusing, kms_host() as good:
        with pytest.raises(ActivationError):
            await activate_first_reachable(
                client_for(), [(LOOPBACK, refusing), (LOOPBACK, good.port)]
            )
        assert good.stats.activations == 0


# ---------------------------------------------------------------------------------------
# Load generator
# ---------------------------------------------------------------------------------------


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([3.0], 0.9) == 3.0
    assert percentile([], 0.5) == 0.0


def test_load_settings_validation() -> None:
    with pytest.raises(ValueError, match="total"):
        LoadSettings(total=0)
    with pytest.raises(ValueError, match="concurrency"):
        LoadSettings(total=1, concurrency=0)
    with pytest.raises(ValueError, match="duration"):
        LoadSettings(total=1, duration_limit=0)


@pytest.mark.parametrize(
    ("per_connection", "connections"), [(1, 120), (10, 12), (1000, 4)], ids=["fresh", "10", "all"]
)
async def test_load_counts(per_connection: int, connections: int) -> None:
    settings = LoadSettings(
        total=120, concurrency=4, duration_limit=30, requests_per_connection=per_connection
    )
    async with kms_host() as host:
        result = await run_load(client_for(), LOOPBACK, host.port, settings)
        assert host.stats.activations == 120
        assert host.stats.connections_accepted == connections
    assert (result.attempted, result.succeeded, result.failed) == (120, 120, 0)
    assert result.connections == connections
    assert len(result.latencies) == 120 and all(v > 0 for v in result.latencies)
    summary = result.summary()
    assert summary["errors"] == {} and summary["succeeded"] == 120
    lat = summary["latency_ms"]
    assert lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert not result.stopped_by_time


async def test_load_counts_errors_by_kind() -> None:
    async with kms_host() as host:

        def refuse_all(_request: KmsRequest) -> HResult:
            return HResult.PRODUCT_NOT_ALLOWED

        host.engine = KmsEngine(host.engine.config, host.identity.provider, refuse_all)
        settings = LoadSettings(total=30, concurrency=3, requests_per_connection=5)
        result = await run_load(client_for(), LOOPBACK, host.port, settings)
    assert (result.attempted, result.succeeded) == (30, 0)
    assert dict(result.errors) == {"hresult 0xC004F042": 30}

    refused = await run_load(client_for(), LOOPBACK, closed_port(), LoadSettings(total=10))
    assert dict(refused.errors) == {"connection failed": 10}


async def test_load_stops_at_the_time_limit() -> None:
    async with fake_host(lambda *_: b"") as port:
        settings = LoadSettings(total=10_000, concurrency=2, duration_limit=0.5)
        result = await run_load(client_for(timeout=0.2), LOOPBACK, port, settings)
    assert result.stopped_by_time
    assert result.succeeded == 0
    assert 0 < result.attempted < 10_000
    assert set(result.errors) == {"timeout"}


def test_error_keys() -> None:
    assert error_key(RpcFaultError(0x1C010003)) == "rpc fault 0x1C010003"
    assert error_key(ActivationError(0xC004F042, "x")) == "hresult 0xC004F042"
    assert error_key(VerificationError("hmac", "x")) == "check hmac"
    assert error_key(KmsTimeoutError("x")) == "timeout"
