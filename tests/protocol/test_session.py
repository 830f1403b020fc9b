"""ServerSession conversations, fed in memory by ClientSession or hand-built PDUs."""

from __future__ import annotations

import random
from typing import Any

import pytest

from kmsgate.protocol import ndr, rpc
from kmsgate.protocol.client_session import ClientSession, expect_response
from kmsgate.protocol.engine import EngineConfig, KmsEngine, ProductPolicy
from kmsgate.protocol.errors import ActivationError, RpcFaultError
from kmsgate.protocol.events import (
    ActivationRefused,
    ActivationServed,
    BindAccepted,
    BindCompleted,
    ConnectionClosed,
    Event,
    FaultSent,
)
from kmsgate.protocol.framing import MAX_REASSEMBLED_STUB
from kmsgate.protocol.hresult import HResult
from kmsgate.protocol.messages import KmsRequest, encode_request
from kmsgate.protocol.ndr import TransferSyntax
from kmsgate.protocol.session import ServerSession, SessionSettings
from kmsgate.protocol.verification import verify_response
from tests.protocol.test_messages import EPID, HWID, IV, NOW, make_request, seeded

NDR32, NDR64 = TransferSyntax.NDR32, TransferSyntax.NDR64
CLOSED_BY_PEER_PDUS: dict[str, rpc.Pdu] = {
    "bind_ack": rpc.BindAck(2, (rpc.ContextResult(0, 0, rpc.NDR32),), secondary_address="1688"),
    "bind_nak": rpc.BindNak(2, 0),
    "response": rpc.Response(2, 0, bytes(16)),
    "fault": rpc.Fault(2, rpc.NCA_UNK_IF),
}


def make_server(
    *,
    ndr64: bool = True,
    btfn: bool = True,
    port: int = 1688,
    max_pdu_size: int = 5840,
    config: EngineConfig | None = None,
    assoc_group_id: int = 0x1234,
    product_policy: ProductPolicy | None = None,
) -> ServerSession:
    engine = KmsEngine(config or EngineConfig(), lambda _r: EPID, product_policy)
    settings = SessionSettings(
        port=port, ndr64=ndr64, btfn=btfn, hwid=HWID, max_pdu_size=max_pdu_size
    )
    return ServerSession(engine, settings, random_bytes=seeded(), assoc_group_id=assoc_group_id)


def pump(server: ServerSession, data: bytes) -> tuple[list[Event], bytes]:
    """Feed bytes; return the events and everything the server queued."""
    events = server.receive_data(data, NOW)
    return events, server.data_to_send()


def bind_of(client: ClientSession) -> bytes:
    """The bind `client` queues."""
    client.send_bind()
    return client.data_to_send()


def request_of(client: ClientSession, message: bytes) -> bytes:
    """The request PDU `client` queues for `message`."""
    client.send_request(message)
    return client.data_to_send()


def answer_of(client: ClientSession, reply: bytes) -> bytes:
    """The KMS message of the reply to the client's request (or its typed error)."""
    [event] = client.receive_data(reply)
    return expect_response(event).message


def handshake(server: ServerSession, client: ClientSession) -> list[Event]:
    """bind (and alter_context if the client needs it) until the client is ready."""
    events, reply = pump(server, bind_of(client))
    answered = client.receive_data(reply)
    alter = client.data_to_send()
    if alter:
        assert answered == []
        more, reply = pump(server, alter)
        answered = client.receive_data(reply)
        events += more
    assert [type(e) for e in answered] == [BindAccepted]
    return events


def activate(
    server: ServerSession, client: ClientSession, request: KmsRequest
) -> tuple[list[Event], bool]:
    """One request through the client; return the events and whether it verified."""
    message = encode_request(request, IV)
    events, reply = pump(server, request_of(client, message))
    return events, verify_response(message, answer_of(client, reply)).ok


def request_pdu(
    message: bytes | None = None,
    *,
    call_id: int = 2,
    context_id: int = 0,
    syntax: TransferSyntax = NDR32,
    opnum: int = 0,
) -> bytes:
    """A single-fragment request PDU (a v6 request message unless one is given)."""
    message = encode_request(make_request(6), IV) if message is None else message
    stub = ndr.wrap_request(message, syntax)
    return rpc.encode_pdu(rpc.Request(call_id, context_id, opnum, stub))


def ndr32_bind(call_id: int = 2) -> bytes:
    """The bind of a client that offers NDR32 only (accepted straight away)."""
    return bind_of(ClientSession(ndr64=False, btfn=False, first_call_id=call_id))


def bound_server(**kwargs: Any) -> ServerSession:
    server = make_server(**kwargs)
    events, _ = pump(server, ndr32_bind())
    assert isinstance(events[0], BindCompleted)
    return server


def split_raw(data: bytes) -> list[bytes]:
    """Cut a byte stream into its PDUs."""
    out = []
    while data:
        length = rpc.parse_header(data).frag_length
        out.append(data[:length])
        data = data[length:]
    return out


def split_pdus(data: bytes) -> list[rpc.Pdu]:
    return [rpc.decode_pdu(raw) for raw in split_raw(data)]


def assert_closed_silently(events: list[Event], out: bytes, server: ServerSession) -> None:
    assert len(events) == 1 and isinstance(events[0], ConnectionClosed) and events[0].reason
    assert out == b"" and server.closed
    assert pump(server, ndr32_bind() + request_pdu()) == ([], b"")


# --- full conversations ----------------------------------------------------------------------


@pytest.mark.parametrize("major", [4, 5, 6])
@pytest.mark.parametrize("ndr64", [True, False], ids=["ndr64", "no_ndr64"])
@pytest.mark.parametrize("btfn", [True, False], ids=["btfn", "no_btfn"])
def test_full_conversation_with_several_requests(major: int, ndr64: bool, btfn: bool) -> None:
    server, client = make_server(ndr64=ndr64, btfn=btfn), ClientSession()
    binds = handshake(server, client)
    assert [(e.alter, e.ndr64, e.btfn_bits) for e in binds if isinstance(e, BindCompleted)] == (
        [(False, True, 3 if btfn else None), (True, False, None)]
        if ndr64
        else [(False, False, 3 if btfn else None)]
    )
    served = []
    for index in range(3):
        request = make_request(major, machine_name=f"pc{index}", required_client_count=25)
        events, ok = activate(server, client, request)
        assert ok and len(events) == 1 and isinstance(events[0], ActivationServed)
        assert events[0].request == request and events[0].response.current_client_count == 50
        served.append((events[0].call_id, events[0].syntax))
    later = NDR64 if ndr64 else NDR32
    assert served == [(2, NDR32), (3, later), (4, later)]
    assert server.requests_served == 3 and not server.closed
    expected_warnings = set()
    if not btfn:
        expected_warnings.add("BTFN answered 2/2, not 3/3")
        if ndr64:
            expected_warnings.add("host accepted NDR64 without acknowledging BTFN")
    assert set(client.warnings) == expected_warnings


@pytest.mark.parametrize("client_ndr64", [True, False], ids=["offer_ndr64", "ndr32_only"])
@pytest.mark.parametrize("client_btfn", [True, False], ids=["offer_btfn", "no_btfn"])
@pytest.mark.parametrize("server_ndr64", [True, False], ids=["host_ndr64", "host_ndr32"])
def test_every_client_offer_reaches_an_activation(
    client_ndr64: bool, client_btfn: bool, server_ndr64: bool
) -> None:
    server = make_server(ndr64=server_ndr64)
    client = ClientSession(ndr64=client_ndr64, btfn=client_btfn)
    handshake(server, client)
    assert client.ndr32_accepted
    assert client.ndr64_accepted == (client_ndr64 and server_ndr64)
    assert client.btfn_bits == (3 if client_btfn else None)
    for _ in range(2):
        events, ok = activate(server, client, make_request(6))
        assert ok and isinstance(events[0], ActivationServed)


def test_v6_response_carries_the_configured_hwid() -> None:
    server, client = make_server(), ClientSession()
    handshake(server, client)
    message = encode_request(make_request(6), IV)
    _, reply = pump(server, request_of(client, message))
    assert verify_response(message, answer_of(client, reply)).hwid == HWID


def test_bind_ack_echoes_the_bind_and_names_the_port() -> None:
    server = make_server(port=41688, assoc_group_id=0)
    _, reply = pump(server, bind_of(ClientSession(first_call_id=77)))
    ack = rpc.decode_pdu(reply)
    assert isinstance(ack, rpc.BindAck) and not ack.alter
    assert (ack.call_id, ack.secondary_address, ack.flags) == (77, "41688", 0x13)
    assert (ack.max_xmit_frag, ack.max_recv_frag) == (5840, 5840)
    assert ack.assoc_group_id != 0
    no_mux = bind_of(ClientSession(conc_mpx=False))
    _, reply = pump(make_server(), no_mux)
    assert rpc.decode_pdu(reply).flags == 0x03


def test_alter_context_resp_has_no_address_and_keeps_the_assoc_group() -> None:
    server, client = make_server(assoc_group_id=0xF27E5A9B), ClientSession()
    _, ack_raw = pump(server, bind_of(client))
    assert client.receive_data(ack_raw) == []
    alter = client.data_to_send()
    assert alter
    _, resp_raw = pump(server, alter)
    ack, resp = rpc.decode_pdu(ack_raw), rpc.decode_pdu(resp_raw)
    assert isinstance(ack, rpc.BindAck) and isinstance(resp, rpc.BindAck)
    assert resp.alter and resp.secondary_address == "" and resp.flags == 0x03
    assert ack.assoc_group_id == resp.assoc_group_id == 0xF27E5A9B
    assert len(resp_raw) == 56


@pytest.mark.parametrize("ndr64", [True, False])
def test_identical_binds_get_each_session_its_own_answer(ndr64: bool) -> None:
    """Bind answers are cached per bind: no session's assoc group or port reaches another."""
    client = ClientSession()
    bind = bind_of(client)
    answers = {}
    for port, assoc in [(1688, 0x11111111), (41688, 0xFFFFFFFF), (1688, 0x22222222)]:
        server = make_server(ndr64=ndr64, port=port, assoc_group_id=assoc)
        (event,), raw = pump(server, bind)
        assert isinstance(event, BindCompleted)
        pdu = rpc.decode_pdu(bind)
        assert isinstance(pdu, rpc.Bind)
        negotiated = rpc.negotiate(pdu.contexts, ndr64=ndr64, btfn=True)
        expected = rpc.BindAck(
            call_id=pdu.call_id,
            results=negotiated.results,
            max_xmit_frag=pdu.max_xmit_frag,
            max_recv_frag=pdu.max_recv_frag,
            assoc_group_id=assoc,
            secondary_address=str(port),
            flags=rpc.PFC_SINGLE | pdu.flags & rpc.PFC_CONC_MPX,
        )
        assert raw == rpc.encode_pdu(expected)
        answers[port, assoc] = raw
    assert len(set(answers.values())) == 3
    # A second PDU in the same read: the assoc group lands in the second answer, not the first.
    server = make_server(ndr64=ndr64, assoc_group_id=0x0A0B0C0D)
    client.receive_data(answers[1688, 0x11111111])
    alter = client.data_to_send() or bind
    _, both = pump(server, bind + alter)
    first, second = split_pdus(both)
    assert isinstance(first, rpc.BindAck) and isinstance(second, rpc.BindAck)
    assert first.assoc_group_id == second.assoc_group_id == 0x0A0B0C0D


# --- framing ---------------------------------------------------------------------------------


def _conversation_stream() -> bytes:
    """bind + two requests of a client that needs no alter_context."""
    return ndr32_bind() + request_pdu(call_id=2) + request_pdu(call_id=3)


def test_bytes_fed_one_at_a_time() -> None:
    server = make_server()
    stream = _conversation_stream()
    events: list[Event] = []
    out = b""
    lengths = [len(raw) for raw in split_raw(stream)]
    pdu_ends = {sum(lengths[: i + 1]) for i in range(len(lengths))}
    for position in range(len(stream)):
        new, data = pump(server, stream[position : position + 1])
        assert bool(new) == bool(data) == (position + 1 in pdu_ends)
        events += new
        out += data
    assert [type(e) for e in events] == [BindCompleted, ActivationServed, ActivationServed]
    assert [type(p) for p in split_pdus(out)] == [rpc.BindAck, rpc.Response, rpc.Response]


@pytest.mark.parametrize("seed", range(8))
def test_random_chunking_gives_the_same_conversation(seed: int) -> None:
    stream = _conversation_stream()
    whole_events, whole_out = pump(make_server(), stream)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(stream)), 6))
    server = make_server()
    events: list[Event] = []
    out = b""
    for start, stop in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        new, data = pump(server, stream[start:stop])
        events += new
        out += data
    assert events == whole_events and out == whole_out


def test_answers_queued_around_a_bind_leave_in_order_and_patched() -> None:
    """A request's answer queued before a bind's (patched in place with the assoc group) and
    after it: one read of them all answers as reads of one PDU each do."""
    rest = request_pdu(call_id=2) + ndr32_bind(call_id=3) + request_pdu(call_id=4)
    rest += request_pdu(call_id=5) + ndr32_bind(call_id=6)
    server = make_server(assoc_group_id=0x01020304)
    pump(server, ndr32_bind())
    whole_events, whole_out = pump(server, rest)
    server = make_server(assoc_group_id=0x01020304)
    pump(server, ndr32_bind())
    one_by_one = [pump(server, raw) for raw in split_raw(rest)]
    assert whole_events == [event for events, _ in one_by_one for event in events]
    assert whole_out == b"".join(out for _, out in one_by_one)
    pdus = split_pdus(whole_out)
    kinds = [type(pdu) for pdu in pdus]
    assert kinds == [rpc.Response, rpc.BindAck, rpc.Response, rpc.Response, rpc.BindAck]
    assert {pdu.assoc_group_id for pdu in pdus if isinstance(pdu, rpc.BindAck)} == {0x01020304}
    assert server.data_to_send() == b""


def test_two_pdus_in_one_read_are_both_answered() -> None:
    server = make_server()
    client = ClientSession(ndr64=False, btfn=False)
    message = encode_request(make_request(5), IV)
    events, out = pump(server, bind_of(client) + request_pdu(message))
    assert [type(e) for e in events] == [BindCompleted, ActivationServed]
    # The response waits in the client's buffer until its request is sent.
    assert [type(e) for e in client.receive_data(out)] == [BindAccepted]
    client.send_request(message)
    [response] = client.receive_data(b"")
    assert verify_response(message, expect_response(response).message).ok
    assert client.receive_data(b"") == []


@pytest.mark.parametrize("call_id", [0, 1, 9, 0xDEADBEEF])
def test_call_id_is_echoed(call_id: int) -> None:
    server = make_server()
    _, ack = pump(server, ndr32_bind(call_id))
    _, response = pump(server, request_pdu(call_id=call_id))
    _, fault = pump(server, request_pdu(call_id=call_id, context_id=5))
    assert [rpc.parse_header(raw).call_id for raw in (ack, response, fault)] == [call_id] * 3
    assert fault[2] == rpc.PType.FAULT


def test_request_with_object_uuid_is_served() -> None:
    server = bound_server()
    stub = ndr.wrap_request(encode_request(make_request(6), IV), NDR32)
    object_uuid = rpc.KMS_INTERFACE
    raw = rpc.encode_pdu(rpc.Request(2, 0, 0, stub, object_uuid=object_uuid))
    events, _ = pump(server, raw)
    assert isinstance(events[0], ActivationServed)


# --- faults ---------------------------------------------------------------------------------


def _single_fault(events: list[Event], out: bytes, status: int, call_id: int) -> None:
    assert len(events) == 1 and isinstance(events[0], FaultSent)
    assert (events[0].status, events[0].call_id) == (status, call_id)
    fault = rpc.decode_pdu(out)
    assert isinstance(fault, rpc.Fault)
    assert (fault.status, fault.call_id, fault.flags, fault.cancel_count) == (
        status,
        call_id,
        0x23,
        0,
    )


def test_request_before_bind_is_a_fault_and_the_connection_stays_usable() -> None:
    server = make_server()
    _single_fault(*pump(server, request_pdu(call_id=4)), rpc.NCA_UNK_IF, 4)
    assert not server.closed
    client = ClientSession()
    assert isinstance(handshake(server, client)[0], BindCompleted)
    assert activate(server, client, make_request(6))[1]


@pytest.mark.parametrize(
    ("ndr64", "context_id", "syntax"),
    [(True, 5, NDR32), (True, 2, NDR32), (False, 1, NDR64), (True, 0xFFFF, NDR32)],
    ids=["unbound_5", "btfn_context", "ndr64_disabled", "max_id"],
)
def test_request_on_a_context_that_was_not_negotiated_is_a_fault(
    ndr64: bool, context_id: int, syntax: TransferSyntax
) -> None:
    server, client = make_server(ndr64=ndr64), ClientSession()
    handshake(server, client)
    raw = request_pdu(context_id=context_id, syntax=syntax, call_id=6)
    _single_fault(*pump(server, raw), rpc.NCA_UNK_IF, 6)
    assert activate(server, client, make_request(6))[1]  # still usable


def test_rejected_wrong_interface_context_is_not_usable() -> None:
    other = rpc.SyntaxId(rpc.NDR64_SYNTAX, 1)  # any non-KMS interface
    bind = rpc.Bind(2, (rpc.ContextElement(0, other, (rpc.NDR32,)),))
    server = make_server()
    events, _ = pump(server, rpc.encode_pdu(bind))
    assert isinstance(events[0], BindCompleted)
    assert events[0].results == (rpc.ContextResult(2, 1),)
    _single_fault(*pump(server, request_pdu()), rpc.NCA_UNK_IF, 2)


@pytest.mark.parametrize("opnum", [1, 2, 0xFFFF])
def test_opnum_other_than_0_is_a_range_fault(opnum: int) -> None:
    server = bound_server()
    _single_fault(*pump(server, request_pdu(opnum=opnum, call_id=3)), 0x1C010002, 3)
    events, _ = pump(server, request_pdu(call_id=4))
    assert isinstance(events[0], ActivationServed)


def test_client_session_reports_a_fault_as_rpc_fault_error() -> None:
    server, client = make_server(), ClientSession()
    client.send_request(encode_request(make_request(6), IV))  # no bind: the host faults
    _, out = pump(server, request_pdu())
    with pytest.raises(RpcFaultError) as info:
        answer_of(client, out)
    assert info.value.status == rpc.NCA_UNK_IF


# --- refusals --------------------------------------------------------------------------------


def _refusal(server: ServerSession, message: bytes) -> tuple[ActivationRefused, ndr.ResponseStub]:
    events, out = pump(server, request_pdu(message))
    assert len(events) == 1 and isinstance(events[0], ActivationRefused)
    response = rpc.decode_pdu(out)
    assert isinstance(response, rpc.Response)
    return events[0], ndr.unwrap_response(response.stub, NDR32)


@pytest.mark.parametrize(
    "message",
    [
        b"\x00\x00\x07\x00" + encode_request(make_request(6), IV)[4:],
        b"\x01\x00\x04\x00" + encode_request(make_request(4))[4:],
        encode_request(make_request(6), IV)[:100],
        b"",
    ],
    ids=["version_7_0", "version_4_1", "truncated", "empty"],
)
def test_undecodable_request_gets_an_invalid_data_error_stub(message: bytes) -> None:
    refused, stub = _refusal(bound_server(), message)
    assert (refused.hresult, refused.request, refused.syntax) == (0x8007000D, None, NDR32)
    assert stub == ndr.ResponseStub(None, 0x8007000D)


def test_policy_refusal_reports_the_decoded_request() -> None:
    server = bound_server(product_policy=lambda _r: HResult.PRODUCT_NOT_ALLOWED)
    refused, stub = _refusal(server, encode_request(make_request(5), IV))
    assert refused.request == make_request(5) and refused.hresult == 0xC004F042
    assert stub.hresult == 0xC004F042 and server.requests_served == 0


@pytest.mark.parametrize(
    ("config", "request_fields", "hresult"),
    [
        (EngineConfig(), {"required_client_count": 1001}, 0x8007000D),
        (EngineConfig(max_clock_skew=3600), {"request_time": NOW - 2 * 36_000_000_000}, 0xC004F06C),
    ],
    ids=["n_count", "clock"],
)
def test_engine_refusals_reach_the_client_as_activation_error(
    config: EngineConfig, request_fields: dict[str, Any], hresult: int
) -> None:
    server, client = make_server(config=config), ClientSession()
    handshake(server, client)
    message = encode_request(make_request(6, **request_fields), IV)
    events, out = pump(server, request_of(client, message))
    assert isinstance(events[0], ActivationRefused) and events[0].hresult == hresult
    with pytest.raises(ActivationError) as info:
        answer_of(client, out)
    assert info.value.hresult == hresult
    assert activate(server, client, make_request(6))[1]  # the connection goes on


def test_refusal_on_ndr64_uses_the_ndr64_error_stub() -> None:
    server, client = make_server(), ClientSession()
    handshake(server, client)
    activate(server, client, make_request(6))
    bad = b"\x00\x00\x07\x00" + bytes(256)
    events, out = pump(server, request_pdu(bad, context_id=1, syntax=NDR64, call_id=3))
    assert isinstance(events[0], ActivationRefused) and events[0].syntax is NDR64
    assert len(out) == 44 and out[-4:] == bytes.fromhex("0d000780")


# --- closing the connection ----------------------------------------------------------------


@pytest.mark.parametrize("ptype", [1, 4, 5, 6, 7, 8, 9, 10, 16, 19, 255])
def test_unknown_ptype_closes_without_output(ptype: int) -> None:
    server = bound_server()
    raw = bytearray(request_pdu())
    raw[2] = ptype
    assert_closed_silently(*pump(server, bytes(raw)), server)


@pytest.mark.parametrize("kind", CLOSED_BY_PEER_PDUS)
def test_server_side_pdus_from_the_client_close_the_connection(kind: str) -> None:
    server = bound_server()
    assert_closed_silently(*pump(server, rpc.encode_pdu(CLOSED_BY_PEER_PDUS[kind])), server)


@pytest.mark.parametrize("frag_length", [5841, 0xFFFF])
def test_oversized_frag_length_closes_as_soon_as_the_header_arrives(frag_length: int) -> None:
    server = bound_server()
    header = bytearray(request_pdu()[:16])
    header[8:10] = frag_length.to_bytes(2, "little")
    assert_closed_silently(*pump(server, bytes(header)), server)


def test_max_pdu_size_is_configurable() -> None:
    server = bound_server(max_pdu_size=200)
    assert_closed_silently(*pump(server, request_pdu()), server)


@pytest.mark.parametrize(
    "header",
    [
        "04000b03100000004800000002000000",  # RPC version 4
        "05000b03000000004800000002000000",  # big-endian drep
        "05000b03100000000f00000002000000",  # frag_length 15
        "ffffffffffffffffffffffffffffffff",
    ],
    ids=["version", "drep", "frag_length", "garbage"],
)
def test_garbage_header_closes_the_connection(header: str) -> None:
    server = make_server()
    assert_closed_silently(*pump(server, bytes.fromhex(header)), server)


def test_authenticated_pdu_closes_the_connection() -> None:
    raw = bytearray(ndr32_bind())
    raw[10] = 8  # auth_length
    server = make_server()
    assert_closed_silently(*pump(server, bytes(raw)), server)


def test_truncated_bind_body_closes_the_connection() -> None:
    raw = bytearray(bind_of(ClientSession())[:100])
    raw[8:10] = (100).to_bytes(2, "little")
    server = make_server()
    assert_closed_silently(*pump(server, bytes(raw)), server)


def test_bind_without_contexts_gets_a_bind_nak_and_closes() -> None:
    server = make_server()
    events, out = pump(server, rpc.encode_pdu(rpc.Bind(5, ())))
    assert len(events) == 1 and isinstance(events[0], ConnectionClosed)
    nak = rpc.decode_pdu(out)
    assert isinstance(nak, rpc.BindNak) and nak.call_id == 5
    assert pump(server, ndr32_bind()) == ([], b"")


def test_alter_context_without_contexts_closes() -> None:
    server = bound_server()
    events, _ = pump(server, rpc.encode_pdu(rpc.Bind(5, (), alter=True)))
    assert [type(e) for e in events] == [ConnectionClosed] and server.closed


def test_bytes_after_a_closing_pdu_in_the_same_read_are_ignored() -> None:
    bad = bytearray(request_pdu())
    bad[2] = 1
    server = make_server()
    events, out = pump(server, ndr32_bind() + bytes(bad) + request_pdu())
    assert [type(e) for e in events] == [BindCompleted, ConnectionClosed]
    assert [type(p) for p in split_pdus(out)] == [rpc.BindAck]


# --- multi-fragment requests -----------------------------------------------------------------


def fragments(
    stub: bytes, cuts: list[int], *, call_id: int = 2, context_id: int = 0, first: bool = True
) -> bytes:
    """The request stub split at `cuts`, as FIRST, middle..., LAST fragments."""
    parts = [stub[a:b] for a, b in zip([0, *cuts], [*cuts, len(stub)], strict=True)]
    out = b""
    for index, part in enumerate(parts):
        flags = (rpc.PFC_FIRST_FRAG if index == 0 and first else 0) | (
            rpc.PFC_LAST_FRAG if index == len(parts) - 1 else 0
        )
        out += rpc.encode_pdu(
            rpc.Request(call_id, context_id, 0, part, alloc_hint=len(stub), flags=flags)
        )
    return out


@pytest.mark.parametrize("cuts", [[1], [8], [150], [291 - 24], [10, 20], [4, 100, 200]])
@pytest.mark.parametrize("syntax", [NDR32, NDR64])
def test_fragmented_request_is_reassembled(cuts: list[int], syntax: TransferSyntax) -> None:
    server, client = make_server(), ClientSession()
    handshake(server, client)
    message = encode_request(make_request(6), IV)
    stub = ndr.wrap_request(message, syntax)
    context = 0 if syntax is NDR32 else 1
    pieces = fragments(stub, cuts, context_id=context)
    events, out = pump(server, pieces)
    assert len(events) == 1 and isinstance(events[0], ActivationServed)
    assert events[0].syntax is syntax and events[0].request == make_request(6)
    response = rpc.decode_pdu(out)
    assert isinstance(response, rpc.Response) and response.context_id == context
    result = ndr.unwrap_response(response.stub, syntax)
    assert result.message is not None and verify_response(message, result.message).ok


def test_fragments_arriving_in_separate_reads_produce_one_answer() -> None:
    server = bound_server()
    stub = ndr.wrap_request(encode_request(make_request(4)), NDR32)
    pieces = split_raw(fragments(stub, [100, 200]))
    assert [pump(server, p)[0] for p in pieces[:2]] == [[], []]
    events, out = pump(server, pieces[2])
    assert isinstance(events[0], ActivationServed) and out


def test_continuation_fragment_without_a_first_one_closes() -> None:
    server = bound_server()
    stub = ndr.wrap_request(encode_request(make_request(6), IV), NDR32)
    assert_closed_silently(*pump(server, fragments(stub, [100], first=False)), server)


def test_fragments_of_different_calls_close_the_connection() -> None:
    server = bound_server()
    stub = ndr.wrap_request(encode_request(make_request(6), IV), NDR32)
    first, last = split_raw(fragments(stub, [100]))
    last = last[:12] + (9).to_bytes(4, "little") + last[16:]  # another call_id
    pump(server, first)
    assert_closed_silently(*pump(server, last), server)


def test_reassembly_larger_than_the_limit_closes() -> None:
    server = bound_server()
    piece = bytes(4000)
    stream = b"".join(
        rpc.encode_pdu(rpc.Request(2, 0, 0, piece, flags=flags))
        for flags in (rpc.PFC_FIRST_FRAG, 0, 0)
    )
    assert 2 * len(piece) <= MAX_REASSEMBLED_STUB < 3 * len(piece)
    events, out = pump(server, stream)
    assert [type(e) for e in events] == [ConnectionClosed] and out == b""


def test_new_first_fragment_discards_the_pending_one() -> None:
    server = bound_server()
    junk_first = rpc.encode_pdu(rpc.Request(2, 0, 0, b"junk", flags=rpc.PFC_FIRST_FRAG))
    events, out = pump(server, junk_first + request_pdu(call_id=3))
    assert len(events) == 1 and isinstance(events[0], ActivationServed)
    assert events[0].call_id == rpc.parse_header(out).call_id == 3


def test_fault_discards_a_pending_reassembly() -> None:
    server = bound_server()
    stub = ndr.wrap_request(encode_request(make_request(6), IV), NDR32)
    first = split_raw(fragments(stub, [100]))[0]
    pump(server, first)
    _single_fault(*pump(server, request_pdu(context_id=9, call_id=7)), rpc.NCA_UNK_IF, 7)
    last = split_raw(fragments(stub, [100]))[1]
    assert_closed_silently(*pump(server, last), server)


# --- failures while building the response ------------------------------------------------------


@pytest.mark.parametrize(
    ("epid", "hwid"), [("9" * 64, HWID), (EPID, bytes(7))], ids=["epid_too_long", "hwid_7_bytes"]
)
def test_failure_to_build_the_response_is_an_invalid_data_answer(epid: str, hwid: bytes) -> None:
    engine = KmsEngine(EngineConfig(), lambda _r: epid)
    settings = SessionSettings(hwid=hwid)
    server = ServerSession(engine, settings, random_bytes=seeded(), assoc_group_id=1)
    pump(server, ndr32_bind())
    refused, stub = _refusal(server, encode_request(make_request(6), IV))
    assert refused.hresult == stub.hresult == 0x8007000D
    assert not server.closed
