"""Property fuzzing: decoders raise only their documented errors, sessions never crash."""

from __future__ import annotations

import contextlib
import struct

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kmsgate.protocol import ndr, rpc
from kmsgate.protocol.client_session import ClientSession, expect_response
from kmsgate.protocol.errors import KmsMessageError, ProtocolError, RpcDecodeError
from kmsgate.protocol.events import BindAccepted, ConnectionClosed
from kmsgate.protocol.messages import DecodedRequest, KmsResponse, decode_request, encode_request
from kmsgate.protocol.ndr import TransferSyntax
from kmsgate.protocol.session import ServerSession
from kmsgate.protocol.verification import verify_response
from tests.protocol.test_messages import IV, exchange, make_request
from tests.protocol.test_session import (
    answer_of,
    bind_of,
    handshake,
    make_server,
    pump,
    request_of,
    split_raw,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HEAVY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PTYPES = [int(p) for p in rpc.PType]
syntaxes = st.sampled_from(TransferSyntax)
versions = st.sampled_from([b"\x00\x00\x04\x00", b"\x00\x00\x05\x00", b"\x00\x00\x06\x00"])


@st.composite
def framed_pdus(draw: st.DrawFn) -> bytes:
    """A header that passes parse_header in front of an arbitrary body."""
    body = draw(st.binary(max_size=400))
    ptype = draw(st.sampled_from(PTYPES) | st.integers(0, 255))
    flags = draw(st.integers(0, 255))
    call_id = draw(st.integers(0, 0xFFFFFFFF))
    drep = b"\x10\x00\x00\x00"
    return struct.pack("<BBBB4sHHI", 5, 0, ptype, flags, drep, 16 + len(body), 0, call_id) + body


@st.composite
def message_like(draw: st.DrawFn) -> bytes:
    """Bytes that start like a KMS message and have one of its usual lengths."""
    length = draw(st.sampled_from([0, 4, 100, 251, 252, 253, 259, 260, 261, 300]))
    return draw(versions) + draw(st.binary(min_size=length, max_size=length))


def _flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for position, bit in flips:
        out[position % len(out)] ^= 1 << bit
    return bytes(out)


flips = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 7)), min_size=1, max_size=4)
chunk_sizes = st.lists(st.integers(1, 400), min_size=1, max_size=12)


# --- decoders ----------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=200) | framed_pdus())
def test_decode_pdu_raises_only_rpc_decode_error(data: bytes) -> None:
    try:
        pdu = rpc.decode_pdu(data)
    except RpcDecodeError:
        return
    assert rpc.parse_header(data).frag_length == len(data)
    assert isinstance(pdu, rpc.Pdu)


@FUZZ
@given(st.binary(max_size=80) | st.binary(min_size=250, max_size=320), syntaxes)
def test_unwrap_request_raises_only_kms_message_error(stub: bytes, syntax: TransferSyntax) -> None:
    try:
        message = ndr.unwrap_request(stub, syntax)
    except KmsMessageError as exc:
        assert exc.hresult == 0x8007000D
        return
    assert len(message) <= len(stub)


@FUZZ
@given(st.binary(max_size=300), syntaxes)
def test_unwrap_response_raises_only_protocol_error(stub: bytes, syntax: TransferSyntax) -> None:
    try:
        result = ndr.unwrap_response(stub, syntax)
    except ProtocolError:
        return
    assert result.message is None or len(result.message) <= len(stub)


@FUZZ
@given(st.binary(max_size=300) | message_like())
def test_decode_request_raises_only_kms_message_error(message: bytes) -> None:
    try:
        decoded = decode_request(message)
    except KmsMessageError as exc:
        assert exc.hresult == 0x8007000D
        return
    assert isinstance(decoded, DecodedRequest) and decoded.major_version in (4, 5, 6)


@FUZZ
@given(st.binary(max_size=300))
def test_kms_response_from_bytes_raises_only_protocol_error(data: bytes) -> None:
    try:
        response, length = KmsResponse.from_bytes(data)
    except ProtocolError:
        return
    assert length <= len(data)
    assert KmsResponse.from_bytes(response.to_bytes()) == (response, length)


REQUESTS = {major: encode_request(make_request(major), IV) for major in (4, 5, 6)}


@st.composite
def response_like(draw: st.DrawFn) -> bytes:
    """A version followed by whole cipher blocks, so that decryption is reached."""
    blocks = draw(st.integers(0, 18))
    return draw(versions) + draw(st.binary(min_size=16 * blocks, max_size=16 * blocks))


@FUZZ
@given(st.sampled_from([4, 5, 6]), st.binary(max_size=300) | response_like())
def test_verify_response_raises_only_protocol_error(major: int, reply: bytes) -> None:
    try:
        verified = verify_response(REQUESTS[major], reply)
    except ProtocolError:
        return
    assert not verified.ok  # random bytes never pass the strict checks


@FUZZ
@given(st.sampled_from([4, 6]), flips)
def test_tampering_with_v4_and_v6_responses_is_always_detected(
    major: int, bits: list[tuple[int, int]]
) -> None:
    message, reply = exchange(major)
    tampered = _flip(reply, bits)
    assume(tampered != reply)  # two flips of the same bit cancel out
    try:
        verified = verify_response(message, tampered)
    except ProtocolError:
        return
    assert not verified.ok


# --- sessions -----------------------------------------------------------------------------------


def _conversation(major: int) -> bytes:
    """Every byte a vlmcs-like client sends: bind, alter_context, NDR32 and NDR64 requests."""
    server, client = make_server(), ClientSession()
    stream = bind_of(client)
    assert client.receive_data(pump(server, stream)[1]) == []
    alter = client.data_to_send()
    assert alter
    stream += alter
    assert [type(e) for e in client.receive_data(pump(server, alter)[1])] == [BindAccepted]
    for _ in range(2):
        request = request_of(client, encode_request(make_request(major), IV))
        answer_of(client, pump(server, request)[1])
        stream += request
    return stream


CONVERSATIONS = [_conversation(major) for major in (4, 5, 6)]


def _feed(server: ServerSession, stream: bytes, sizes: list[int]) -> None:
    """Feed `stream` in chunks; check the session's invariants after every call."""
    closed = False
    position, index = 0, 0
    while position < len(stream):
        size = sizes[index % len(sizes)]
        events = server.receive_data(stream[position : position + size], 0)
        out = server.data_to_send()
        position, index = position + size, index + 1
        if closed:
            assert events == [] and out == b"", "output after ConnectionClosed"
            continue
        closing = [i for i, e in enumerate(events) if isinstance(e, ConnectionClosed)]
        assert closing in ([], [len(events) - 1]), "events after ConnectionClosed"
        closed = bool(closing)
        assert server.closed == closed
        for raw in split_raw(out):
            assert rpc.decode_pdu(raw).call_id is not None  # only well-formed PDUs go out


@HEAVY
@given(st.binary(max_size=700), chunk_sizes)
def test_server_session_survives_arbitrary_bytes(stream: bytes, sizes: list[int]) -> None:
    _feed(make_server(), stream, sizes)


@HEAVY
@given(framed_pdus(), chunk_sizes)
def test_server_session_survives_arbitrary_pdus_after_a_bind(pdu: bytes, sizes: list[int]) -> None:
    server = make_server()
    handshake(server, ClientSession(ndr64=False))
    _feed(server, pdu + pdu, sizes)


@HEAVY
@given(st.sampled_from(CONVERSATIONS), flips, chunk_sizes)
def test_server_session_survives_mutated_conversations(
    stream: bytes,
    bits: list[tuple[int, int]],
    sizes: list[int],
) -> None:
    _feed(make_server(), _flip(stream, bits), sizes)


@HEAVY
@given(st.sampled_from(CONVERSATIONS), st.integers(1, 2000), chunk_sizes)
def test_server_session_survives_truncated_conversations(
    stream: bytes, cut: int, sizes: list[int]
) -> None:
    _feed(make_server(), stream[: len(stream) - cut % len(stream)], sizes)


def test_unmutated_conversations_are_fully_served() -> None:
    for stream in CONVERSATIONS:
        server = make_server()
        _feed(server, stream, [7])
        assert server.requests_served == 2 and not server.closed


# --- client ----------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=200) | framed_pdus())
def test_client_session_raises_only_protocol_errors(reply: bytes) -> None:
    binding = ClientSession()
    binding.send_bind()
    waiting = ClientSession(ndr64=False, btfn=False)
    waiting.send_bind()
    waiting.receive_data(
        rpc.encode_pdu(rpc.BindAck(2, (rpc.ContextResult(0, 0, rpc.NDR32),), flags=0x13))
    )
    waiting.send_request(b"")
    with contextlib.suppress(ProtocolError):
        binding.receive_data(reply)
    with contextlib.suppress(ProtocolError):
        for event in waiting.receive_data(reply):
            expect_response(event)
