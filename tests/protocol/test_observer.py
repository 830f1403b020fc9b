"""ConversationObserver: captured conversations in any chunking, live sessions, arbitrary bytes."""

from __future__ import annotations

import random
import struct
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmsgate.protocol import ndr, rpc
from kmsgate.protocol.client_session import ClientSession
from kmsgate.protocol.errors import ActivationError, ProtocolError
from kmsgate.protocol.events import (
    ActivationRefused,
    ActivationServed,
    BindAccepted,
    BindCompleted,
    ConnectionClosed,
    Direction,
    FaultSent,
    ObserverEvent,
    ObserverNote,
)
from kmsgate.protocol.hresult import HResult
from kmsgate.protocol.messages import (
    KmsRequest,
    decode_request,
    encode_request,
    encode_response,
)
from kmsgate.protocol.ndr import TransferSyntax
from kmsgate.protocol.observer import MAX_PENDING_CALLS, ConversationObserver, decode_response
from tests import vectors
from tests.protocol.test_fuzz import framed_pdus
from tests.protocol.test_messages import HWID, IV, exchange, make_request, make_response, seeded
from tests.protocol.test_session import answer_of, bind_of, make_server, pump, request_of

NAMES = vectors.conversation_names()
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
Answer = ActivationServed | ActivationRefused | FaultSent

# The host refused these before decoding them, so the events carry no request (as ours do).
UNDECODABLE = {
    "vlmcsd_err_truncated_request",
    "vlmcsd_err_version_4_1",
    "vlmcsd_err_version_7_0",
    "vlmcsd_err_version_7_0_ndr32_ndr64",
}
# Notes a careful auditor must raise on these captures, and on no others.
EXPECTED_NOTES = {
    "vlmcsd_err_time_c1_stalemac": ["v4 request MAC does not match"],
    "vlmcsd_count_M1_E1": ["response fails checks: client_count"] * 3,
    "vlmcsd_close_on_unknown_ptype": ["unknown PDU type 1"],
}


# --- feeding ------------------------------------------------------------------------------


def _runs(conv: vectors.Conversation) -> list[tuple[str, bytes | None]]:
    """Consecutive PDUs of one direction joined into one stream; None marks the host's close."""
    runs: list[tuple[str, bytes | None]] = []
    for direction, raw in conv.pdus:
        if raw is None:
            runs.append((direction, None))
        elif runs and runs[-1][0] == direction and runs[-1][1] is not None:
            runs[-1] = (direction, runs[-1][1] + raw)
        else:
            runs.append((direction, raw))
    return runs


def _cut(data: bytes, rng: random.Random) -> list[bytes]:
    """Random TCP-like segments, often splitting headers and crossing PDU boundaries."""
    chunks, position = [], 0
    while position < len(data):
        size = rng.choice([1, 2, 7, 15, 16, 17, 40, 100, 1000])
        chunks.append(data[position : position + size])
        position += size
    return chunks


def observe(conv: vectors.Conversation, rng: random.Random | None = None) -> list[ObserverEvent]:
    """Every event of the conversation fed run by run, cut at random when `rng` is given."""
    observer = ConversationObserver()
    events: list[ObserverEvent] = []
    for direction, data in _runs(conv):
        if data is None:
            events += observer.connection_closed("server")
            continue
        side: Direction = "client" if direction == "c2s" else "server"
        for chunk in _cut(data, rng) if rng else [data]:
            events += observer.receive_data(side, chunk)
    assert observer.buffered == 0
    return events


def _expected_syntax(raw: bytes) -> TransferSyntax:
    """vlmcs proposes NDR32 on context 0 and NDR64 on context 1."""
    request = rpc.decode_pdu(raw)
    assert isinstance(request, rpc.Request)
    return TransferSyntax.NDR64 if request.context_id == 1 else TransferSyntax.NDR32


def _check_request(request: KmsRequest, expected: dict[str, object]) -> None:
    actual = {
        "version": f"{request.major_version}.{request.minor_version}",
        "application_id": str(request.application_id),
        "sku_id": str(request.sku_id),
        "kms_counted_id": str(request.kms_counted_id),
        "client_machine_id": str(request.client_machine_id),
        "machine_name": request.machine_name,
        "required_client_count": request.required_client_count,
        "request_time_filetime": request.request_time,
        "license_status": request.license_status,
        "is_client_vm": request.is_client_vm,
    }
    compared = [key for key, value in expected.items() if key in actual and value is not None]
    assert {key: actual[key] for key in compared} == {key: expected[key] for key in compared}
    assert {"client_machine_id", "machine_name", "kms_counted_id"} <= set(compared)


# --- captured conversations ---------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", [None, 1, 2, 3])
def test_events_match_the_captured_exchanges(name: str, seed: int | None) -> None:
    conv = vectors.load(name)
    events = observe(conv, random.Random(seed) if seed is not None else None)
    answers = [e for e in events if isinstance(e, Answer)]
    answered = [x for x in conv.exchanges if x.answer_pdu is not None]
    assert len(answers) == len(answered)
    for exchange_, event in zip(answered, answers, strict=True):
        raw = conv.pdus[exchange_.request_pdu][1]
        assert raw is not None
        assert event.call_id == rpc.parse_header(raw).call_id
        if exchange_.outcome == "fault":
            assert isinstance(event, FaultSent) and event.status == rpc.NCA_UNK_IF
            continue
        assert not isinstance(event, FaultSent)
        assert event.syntax == _expected_syntax(raw)
        if exchange_.outcome == "kms_error":
            assert isinstance(event, ActivationRefused) and event.hresult == exchange_.hresult
            assert (event.request is None) == (name in UNDECODABLE)
            if event.request is not None:
                _check_request(event.request, exchange_.request)
            continue
        assert isinstance(event, ActivationServed)
        _check_request(event.request, exchange_.request)
        response, expected = event.response, exchange_.response
        assert response.epid == expected["epid"]
        assert response.client_machine_id == event.request.client_machine_id
        if expected.get("current_client_count") is not None:
            assert response.current_client_count == expected["current_client_count"]
        if expected.get("renewal_interval_minutes") is not None:
            assert response.renewal_interval == expected["renewal_interval_minutes"]
    notes = [e.reason for e in events if isinstance(e, ObserverNote)]
    expected_notes = EXPECTED_NOTES.get(name, [])
    assert len(notes) == len(expected_notes)
    assert all(text in note for text, note in zip(expected_notes, notes, strict=True))
    closes = [e for e in events if isinstance(e, ConnectionClosed)]
    assert len(closes) == (name == "vlmcsd_close_on_unknown_ptype")
    acks = [raw for d, raw in conv.pdus if d == "s2c" and raw and raw[2] in (12, 15)]
    assert sum(isinstance(e, BindCompleted) for e in events) == len(acks)


@pytest.mark.parametrize("name", NAMES)
def test_decode_response_gives_the_captured_hwid_and_passes_the_checks(name: str) -> None:
    conv = vectors.load(name)
    observer = ConversationObserver()
    for exchange_ in conv.exchanges:
        if exchange_.outcome != "ok":
            continue
        raw, answer = conv.pdus[exchange_.request_pdu][1], conv.pdus[exchange_.answer_pdu or 0][1]
        assert raw is not None and answer is not None
        request, response = rpc.decode_pdu(raw), rpc.decode_pdu(answer)
        assert isinstance(request, rpc.Request) and isinstance(response, rpc.Response)
        syntax = _expected_syntax(raw)
        decoded = decode_request(ndr.unwrap_request(request.stub, syntax))
        message = ndr.unwrap_response(response.stub, syntax).message
        assert message is not None
        kms_response, hwid, checks = decode_response(decoded, message)
        assert kms_response.epid == exchange_.response["epid"]
        if exchange_.response.get("hwid"):
            assert hwid is not None and hwid.hex().upper() == exchange_.response["hwid"]
        assert (hwid is not None) == (decoded.major_version == 6)
        failed = {c.name for c in checks if not c.passed}
        assert failed <= {"client_count"}  # vlmcsd's counting mode reports fewer than N
    assert observer.buffered == 0


# --- against the built-in host ------------------------------------------------------------


def _mirror(server_events: list[object], observed: list[ObserverEvent]) -> None:
    """The observer's events equal the host's, except for the free-text reasons."""

    def key(event: object) -> object:
        if isinstance(event, ActivationRefused):
            return ("refused", event.call_id, event.syntax, event.request, event.hresult)
        if isinstance(event, FaultSent):
            return ("fault", event.call_id, event.status)
        return event

    assert [key(e) for e in observed if not isinstance(e, ObserverNote)] == [
        key(e) for e in server_events
    ]


@pytest.mark.parametrize("ndr64", [True, False])
def test_events_equal_those_of_the_host_that_answered(ndr64: bool) -> None:
    refused = make_request(6, kms_counted_id=uuid.UUID(int=7))

    def policy(request: KmsRequest) -> HResult | None:
        return HResult.PRODUCT_NOT_ALLOWED if request.kms_counted_id.int == 7 else None

    server = make_server(ndr64=ndr64, product_policy=policy)
    client = ClientSession()
    observer = ConversationObserver()
    host_events: list[object] = []
    seen: list[ObserverEvent] = []

    def send(data: bytes) -> bytes:
        events, reply = pump(server, data)
        host_events.extend(events)
        seen.extend(observer.receive_data("client", data))
        seen.extend(observer.receive_data("server", reply))
        return reply

    answered = client.receive_data(send(bind_of(client)))
    if alter := client.data_to_send():
        assert answered == []
        answered = client.receive_data(send(alter))
    assert [type(e) for e in answered] == [BindAccepted]
    for request in (make_request(4), make_request(5), refused, make_request(6)):
        reply = send(request_of(client, encode_request(request, IV)))
        if request is refused:
            with pytest.raises(ActivationError):
                answer_of(client, reply)
        else:
            answer_of(client, reply)
    stub = ndr.wrap_request(encode_request(make_request(6), IV), TransferSyntax.NDR32)
    send(rpc.encode_pdu(rpc.Request(40, 9, 0, stub)))  # unbound context: fault
    _mirror(host_events, seen)
    assert sum(isinstance(e, ActivationServed) for e in seen) == 3
    assert not [e for e in seen if isinstance(e, ObserverNote)]


def test_request_on_an_unknown_context_is_decoded_from_its_stub_layout() -> None:
    message = encode_request(make_request(6), IV)
    decoded = decode_request(message)
    reply = encode_response(
        decoded, make_response(decoded.request), random_bytes=seeded(), hwid=HWID
    )
    observer = ConversationObserver()
    for syntax in TransferSyntax:
        request = rpc.Request(3, 5, 0, ndr.wrap_request(message, syntax))
        assert observer.receive_data("client", rpc.encode_pdu(request)) == []
        response = rpc.Response(3, 5, ndr.wrap_response(reply, syntax))
        [event] = observer.receive_data("server", rpc.encode_pdu(response))
        assert isinstance(event, ActivationServed)
        assert (event.syntax, event.request) == (syntax, decoded.request)


def test_answer_with_another_call_id_is_paired_and_noted() -> None:
    message, reply = exchange(4)
    observer = ConversationObserver()
    stub = ndr.wrap_request(message, TransferSyntax.NDR32)
    observer.receive_data("client", rpc.encode_pdu(rpc.Request(5, 0, 0, stub)))
    wrapped = ndr.wrap_response(reply, TransferSyntax.NDR32)
    note, served = observer.receive_data("server", rpc.encode_pdu(rpc.Response(6, 0, wrapped)))
    assert isinstance(served, ActivationServed) and served.call_id == 5
    assert isinstance(note, ObserverNote) and "differs" in note.reason
    assert note.unaccounted  # a gateway cannot know which call this answered


def test_fragmented_request_and_response_are_reassembled() -> None:
    message, reply = exchange(6)
    observer = ConversationObserver()
    stub = ndr.wrap_request(message, TransferSyntax.NDR32)
    flags = (rpc.PFC_FIRST_FRAG, 0, rpc.PFC_LAST_FRAG)
    parts = [stub[:100], stub[100:200], stub[200:]]
    for part, flag in zip(parts, flags, strict=True):
        pdu = rpc.encode_pdu(rpc.Request(2, 0, 0, part, flags=flag))
        assert observer.receive_data("client", pdu) == []
    wrapped = ndr.wrap_response(reply, TransferSyntax.NDR32)
    halves = [(wrapped[:50], rpc.PFC_FIRST_FRAG), (wrapped[50:], rpc.PFC_LAST_FRAG)]
    events: list[ObserverEvent] = []
    for part, flag in halves:
        events += observer.receive_data(
            "server", rpc.encode_pdu(rpc.Response(2, 0, part, flags=flag))
        )
    assert [type(e) for e in events] == [ActivationServed]


def test_unanswered_calls_are_bounded_and_reported_on_close() -> None:
    observer = ConversationObserver()
    stub = ndr.wrap_request(encode_request(make_request(4), IV), TransferSyntax.NDR32)
    stream = b"".join(rpc.encode_pdu(rpc.Request(n, 0, 0, stub)) for n in range(200))
    events = observer.receive_data("client", stream)
    assert len(events) == 200 - MAX_PENDING_CALLS
    assert all(isinstance(e, ObserverNote) and "too many" in e.reason for e in events)
    assert all(isinstance(e, ObserverNote) and e.unaccounted for e in events)
    [closed] = observer.connection_closed("server")
    assert isinstance(closed, ConnectionClosed)
    assert f"{MAX_PENDING_CALLS} unanswered" in closed.reason
    assert observer.receive_data("client", stream) == []
    assert observer.connection_closed("server") == []


def test_garbage_stops_framing_that_direction_only() -> None:
    observer = ConversationObserver()
    [note] = observer.receive_data("client", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(note, ObserverNote) and note.direction == "client"
    assert "unsupported RPC version" in note.reason and note.unaccounted
    progress = observer.progress
    assert observer.receive_data("client", b"more junk" * 1000) == []
    assert observer.progress > progress  # opaque bytes still count as activity
    assert observer.buffered == 0
    [closed] = observer.connection_closed("server")
    assert isinstance(closed, ConnectionClosed) and "unsupported RPC version" in closed.reason


def test_buffer_of_one_huge_fragment_is_bounded() -> None:
    observer = ConversationObserver()
    header = struct.pack("<BBBB4sHHI", 5, 0, 0, 3, b"\x10\x00\x00\x00", 0xFFFF, 0, 2)
    assert observer.receive_data("server", header) == []
    for _ in range(100):
        observer.receive_data("server", bytes(4096))
    assert observer.buffered < 0x10000


def test_clean_close_reports_nothing() -> None:
    conv = vectors.load("vlmcsd_v6_server2019dc")
    observer = ConversationObserver()
    for direction, raw in conv.pdus:
        assert raw is not None
        observer.receive_data("client" if direction == "c2s" else "server", raw)
    assert observer.connection_closed("server") == []
    assert observer.connection_closed("client") == []


# --- fuzzing ------------------------------------------------------------------------------

_CONVERSATION_BYTES = [
    [(d == "c2s", raw) for d, raw in vectors.load(name).pdus if raw] for name in NAMES
]


def _check_events(events: list[ObserverEvent]) -> None:
    for event in events:
        if isinstance(event, ObserverNote):
            assert "observer error" not in event.reason, event.reason


@FUZZ
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=300) | framed_pdus()), max_size=12))
def test_arbitrary_bytes_in_both_directions_never_raise(chunks: list[tuple[bool, bytes]]) -> None:
    observer = ConversationObserver()
    for from_client, data in chunks:
        _check_events(observer.receive_data("client" if from_client else "server", data))
        assert observer.buffered < 2 * 0x10000
    _check_events(observer.connection_closed("server") + observer.connection_closed("client"))


@FUZZ
@given(
    st.sampled_from(_CONVERSATION_BYTES),
    st.lists(st.tuples(st.integers(0, 20), st.integers(0, 400), st.integers(0, 7)), max_size=6),
    st.integers(1, 64),
)
def test_tampered_conversations_never_raise(
    pdus: list[tuple[bool, bytes]], flips: list[tuple[int, int, int]], size: int
) -> None:
    tampered = [(from_client, bytearray(raw)) for from_client, raw in pdus]
    for index, position, bit in flips:
        raw = tampered[index % len(tampered)][1]
        raw[position % len(raw)] ^= 1 << bit
    observer = ConversationObserver()
    for from_client, raw in tampered:
        side: Direction = "client" if from_client else "server"
        for start in range(0, len(raw), size):
            _check_events(observer.receive_data(side, bytes(raw[start : start + size])))
    _check_events(observer.connection_closed("server"))


@FUZZ
@given(st.sampled_from(TransferSyntax), st.binary(max_size=400))
def test_responses_with_arbitrary_stubs_never_raise(syntax: TransferSyntax, stub: bytes) -> None:
    observer = ConversationObserver()
    message = encode_request(make_request(6), IV)
    request = rpc.Request(2, 0, 0, ndr.wrap_request(message, syntax))
    observer.receive_data("client", rpc.encode_pdu(request))
    _check_events(observer.receive_data("server", rpc.encode_pdu(rpc.Response(2, 0, stub))))


@FUZZ
@given(st.sampled_from([4, 5, 6]), st.binary(max_size=300))
def test_decode_response_raises_only_protocol_error(major: int, reply: bytes) -> None:
    decoded = decode_request(encode_request(make_request(major), IV))
    try:
        _, _, checks = decode_response(decoded, reply)
    except ProtocolError:
        return
    assert not all(c.passed for c in checks)


def test_an_observer_bug_becomes_a_note_and_decoding_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(message: bytes) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr("kmsgate.protocol.observer.decode_request", broken)
    observer = ConversationObserver()
    stub = ndr.wrap_request(encode_request(make_request(4), IV), TransferSyntax.NDR32)
    [note] = observer.receive_data("client", rpc.encode_pdu(rpc.Request(2, 0, 0, stub)))
    assert isinstance(note, ObserverNote) and "observer error" in note.reason
    assert note.unaccounted
    assert observer.receive_data("server", b"anything") == []
    assert observer.connection_closed("server") == []


def _served_after(
    observer: ConversationObserver, call_id: int, reply: bytes
) -> list[ObserverEvent]:
    wrapped = ndr.wrap_response(reply, TransferSyntax.NDR32)
    return observer.receive_data("server", rpc.encode_pdu(rpc.Response(call_id, 0, wrapped)))


def test_a_reused_call_id_leaves_the_earlier_call_unaccounted() -> None:
    message, reply = exchange(6)
    stub = ndr.wrap_request(message, TransferSyntax.NDR32)
    observer = ConversationObserver()
    assert observer.receive_data("client", rpc.encode_pdu(rpc.Request(2, 0, 0, stub))) == []
    junk = rpc.encode_pdu(rpc.Request(2, 0, 0, b"\x04\x00\x00\x00\x04\x00\x00\x00JUNK"))
    [reused] = observer.receive_data("client", junk)
    assert isinstance(reused, ObserverNote) and reused.unaccounted
    # The host answered the first request; the observer pairs it with the junk one.
    [undecodable] = _served_after(observer, 2, reply)
    assert isinstance(undecodable, ObserverNote) and undecodable.unaccounted


def test_which_failed_checks_leave_a_served_answer_unaccounted() -> None:
    """An answer for another machine proves nothing about the request it was paired with; a
    count below the client's N is an honest (if useless) answer to it."""
    for fields, unaccounted in (
        ({"client_machine_id": uuid.UUID(int=1)}, True),
        ({"current_client_count": 1}, False),
    ):
        message, reply = exchange(6, **fields)
        observer = ConversationObserver()
        stub = ndr.wrap_request(message, TransferSyntax.NDR32)
        observer.receive_data("client", rpc.encode_pdu(rpc.Request(2, 0, 0, stub)))
        served, note = _served_after(observer, 2, reply)
        assert isinstance(served, ActivationServed)
        assert isinstance(note, ObserverNote) and note.reason.startswith("response fails checks")
        assert note.unaccounted is unaccounted, fields


def test_notes_that_carry_no_served_answer_are_accounted() -> None:
    observer = ConversationObserver()
    fault = rpc.encode_pdu(rpc.Fault(2, 0x1C010003))
    note, sent = observer.receive_data("server", fault)
    assert isinstance(note, ObserverNote) and "fault to no pending call" in note.reason
    assert not note.unaccounted and isinstance(sent, FaultSent)
    tampered = bytearray(encode_request(make_request(4), IV))
    tampered[-1] ^= 1  # the v4 MAC no longer matches; the host refuses, or serves it counted
    stub = ndr.wrap_request(bytes(tampered), TransferSyntax.NDR32)
    [mac] = observer.receive_data("client", rpc.encode_pdu(rpc.Request(3, 0, 0, stub)))
    assert isinstance(mac, ObserverNote) and "MAC" in mac.reason and not mac.unaccounted
