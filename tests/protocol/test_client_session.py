"""ClientSession: the PDUs a vlmcs-like client sends and its strict checks (spec §5.2, §7.3)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from kmsgate.protocol import ndr, rpc
from kmsgate.protocol.client_session import (
    ClientSession,
    expect_bind_accepted,
    expect_response,
)
from kmsgate.protocol.errors import ActivationError, FramingError, ProtocolError, RpcFaultError
from kmsgate.protocol.events import (
    BindAccepted,
    BindRejected,
    ClientEvent,
    ErrorReceived,
    FaultReceived,
    ResponseReceived,
)
from kmsgate.protocol.ndr import TransferSyntax
from tests import vectors
from tests.protocol.test_session import make_server, pump

ACCEPT32 = rpc.ContextResult(0, 0, rpc.NDR32)
ACCEPT64 = rpc.ContextResult(0, 0, rpc.NDR64)
REJECT = rpc.ContextResult(2, 2)
ACK3 = rpc.ContextResult(3, 3)
CAPTURED = {p["file"]: bytes.fromhex(p["hex"]) for p in vectors.raw_json("client_pdus")["pdus"]}
MESSAGE = b"\x00\x00\x06\x00" + bytes(256)
# error_paths.json: "bind with a single NDR32 context" (an alter_context retyped to bind)
NDR32_ONLY_BIND = bytes.fromhex(vectors.raw_json("error_paths")[3]["sent_hex"])


def ack(*results: rpc.ContextResult, call_id: int = 2, alter: bool = False, **kw: int) -> bytes:
    flags = kw.pop("flags", 0x03 if alter else 0x13)
    address = "" if alter else "1688"
    return rpc.encode_pdu(
        rpc.BindAck(call_id, results, secondary_address=address, flags=flags, alter=alter, **kw)
    )


def response(stub: bytes, **fields: Any) -> bytes:
    return rpc.encode_pdu(dataclasses.replace(rpc.Response(2, 0, stub), **fields))


def bind(client: ClientSession) -> bytes:
    """The bind `client` queues."""
    client.send_bind()
    return client.data_to_send()


def request(client: ClientSession, message: bytes = MESSAGE) -> bytes:
    """The request PDU `client` queues for `message`."""
    client.send_request(message)
    return client.data_to_send()


def bind_reply(client: ClientSession, raw: bytes) -> bytes | None:
    """Feed a bind reply: the alter_context it asks for, else None once the bind is accepted."""
    events = client.receive_data(raw)
    alter = client.data_to_send()
    if alter:
        assert events == []
        return alter
    assert events == [BindAccepted(client.ndr32_accepted, client.ndr64_accepted, client.btfn_bits)]
    return None


def answer(client: ClientSession, raw: bytes) -> bytes:
    """Feed the reply to a request: its KMS message, or the typed error it amounts to."""
    [event] = client.receive_data(raw)
    return expect_response(event).message


def bound_client(**options: bool) -> ClientSession:
    """A client whose bind was accepted with NDR32 (+BTFN when offered)."""
    client = ClientSession(ndr64=False, **options)
    bind(client)
    results = (ACCEPT32, ACK3) if client.offer_btfn else (ACCEPT32,)
    assert bind_reply(client, ack(*results)) is None
    return client


def waiting_client() -> ClientSession:
    """A client that has sent one NDR32 request and waits for its response."""
    client = bound_client(btfn=False)
    client.send_request(MESSAGE)
    return client


# --- what the client sends -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "captured"),
    [
        ({}, CAPTURED["v6_bind3ctx.bin"]),
        ({"ndr64": False}, CAPTURED["v6_bind.bin"]),
        ({"ndr64": False, "btfn": False}, NDR32_ONLY_BIND),
    ],
    ids=["ndr64_btfn", "btfn", "ndr32_only"],
)
def test_bind_is_byte_identical_to_vlmcs(options: dict[str, bool], captured: bytes) -> None:
    assert bind(ClientSession(**options)) == captured


def test_bind_with_ndr64_without_btfn() -> None:
    bind_pdu = rpc.decode_pdu(bind(ClientSession(btfn=False)))
    assert isinstance(bind_pdu, rpc.Bind)
    assert [(c.context_id, c.transfer_syntaxes) for c in bind_pdu.contexts] == [
        (0, (rpc.NDR32,)),
        (1, (rpc.NDR64,)),
    ]


def test_bind_without_conc_mpx() -> None:
    raw = bind(ClientSession(conc_mpx=False))
    assert raw[3] == 0x03 and raw[4:] == CAPTURED["v6_bind3ctx.bin"][4:]


@pytest.mark.parametrize("major", [4, 5, 6])
def test_conversation_pdus_are_byte_identical_to_vlmcs(major: int) -> None:
    server, client = make_server(), ClientSession()
    sent = bind(client)
    assert sent == CAPTURED[f"v{major}_bind3ctx.bin"]
    alter = bind_reply(client, pump(server, sent)[1])
    assert alter == CAPTURED[f"v{major}_alter.bin"]
    assert bind_reply(client, pump(server, alter)[1]) is None
    for suffix, syntax in (("", TransferSyntax.NDR32), ("_ndr64", TransferSyntax.NDR64)):
        name = f"v{major}_req{suffix}.bin"
        captured = rpc.decode_pdu(CAPTURED[name])
        assert isinstance(captured, rpc.Request)
        sent = request(client, ndr.unwrap_request(captured.stub, syntax))
        assert sent == CAPTURED[name] and client.syntax is syntax
        assert answer(client, pump(server, sent)[1])
    assert client.warnings == []


def test_ndr32_is_used_throughout_when_ndr64_was_not_accepted() -> None:
    client = bound_client()
    for call_id in (2, 3, 4):
        pdu = rpc.decode_pdu(request(client))
        assert isinstance(pdu, rpc.Request)
        assert (pdu.call_id, pdu.context_id, client.syntax) == (call_id, 0, TransferSyntax.NDR32)
        answer(client, response(ndr.wrap_response(b"r", TransferSyntax.NDR32), call_id=call_id))


def test_first_call_id_is_configurable() -> None:
    client = ClientSession(first_call_id=40, ndr64=False, btfn=False)
    assert rpc.parse_header(bind(client)).call_id == 40
    bind_reply(client, ack(ACCEPT32, call_id=40))
    assert rpc.parse_header(request(client)).call_id == 40


def test_requests_wait_for_the_alter_context_and_fall_back_to_ndr64() -> None:
    client = ClientSession()
    bind(client)
    alter = bind_reply(client, ack(REJECT, ACCEPT64, ACK3))
    assert alter is not None
    with pytest.raises(ProtocolError):
        client.send_request(MESSAGE)  # the alter_context is still unanswered
    assert bind_reply(client, ack(REJECT, alter=True)) is None
    assert client.ndr64_accepted and not client.ndr32_accepted
    pdu = rpc.decode_pdu(request(client))
    assert isinstance(pdu, rpc.Request) and pdu.context_id == 1
    assert client.syntax is TransferSyntax.NDR64


# --- strict checks of bind_ack ---------------------------------------------------------------


def _bind_reply_errors() -> dict[str, bytes]:
    good = ack(ACCEPT32, ACK3)
    return {
        "wrong_call_id": ack(ACCEPT32, ACK3, call_id=3),
        "alter_resp_to_bind": ack(ACCEPT32, ACK3, alter=True),
        "fault": rpc.encode_pdu(rpc.Fault(2, rpc.NCA_UNK_IF)),
        "too_few_results": ack(ACCEPT32),
        "too_many_results": ack(ACCEPT32, ACK3, ACK3),
        "nothing_accepted": ack(REJECT, ACK3),
        "other_syntax_accepted": ack(ACCEPT64, ACK3),
        "user_rejection": ack(rpc.ContextResult(1, 0), ACK3),
        "negotiate_ack_on_ndr32": ack(ACK3, ACK3),
        "version_5_1": good[:1] + b"\x01" + good[2:],
        "big_endian": good[:4] + b"\x00" + good[5:],
        "float_rep": good[:5] + b"\x01" + good[6:],
        "not_last_fragment": good[:3] + b"\x11" + good[4:],
        "not_first_fragment": good[:3] + b"\x12" + good[4:],
        "auth_length": good[:10] + b"\x08\x00" + good[12:],
    }


BIND_REPLY_ERRORS = _bind_reply_errors()


@pytest.mark.parametrize("case", BIND_REPLY_ERRORS)
def test_bad_bind_ack_is_a_protocol_error(case: str) -> None:
    client = ClientSession(ndr64=False)
    bind(client)
    with pytest.raises(ProtocolError):
        client.receive_data(BIND_REPLY_ERRORS[case])


def test_bind_nak_is_a_rejection_the_client_reports_as_a_protocol_error() -> None:
    client = ClientSession(ndr64=False)
    bind(client)
    [event] = client.receive_data(rpc.encode_pdu(rpc.BindNak(2, 1)))
    assert event == BindRejected(2, 1)
    with pytest.raises(ProtocolError, match="bind_nak, reason 1"):
        expect_bind_accepted(event)
    with pytest.raises(ProtocolError):
        expect_response(event)


def test_bind_ack_to_the_alter_context_is_a_protocol_error() -> None:
    client = ClientSession()
    bind(client)
    bind_reply(client, ack(REJECT, ACCEPT64, ACK3))
    with pytest.raises(ProtocolError):
        client.receive_data(ack(ACCEPT32))


# --- warnings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("results", "flags", "warning"),
    [
        ((ACCEPT32, rpc.ContextResult(2, 2)), 0x13, "BTFN answered 2/2, not 3/3"),
        ((ACCEPT32, rpc.ContextResult(3, 1)), 0x13, "BTFN answered 3/1, not 3/3"),
        ((rpc.ContextResult(0, 1, rpc.NDR32), ACK3), 0x13, "accepted context 0 has reason 1"),
        ((ACCEPT32, ACK3), 0x03, "bind_ack CONC_MPX flag differs from the bind"),
    ],
)
def test_soft_deviations_in_bind_ack_are_warnings(
    results: tuple[rpc.ContextResult, ...], flags: int, warning: str
) -> None:
    client = ClientSession(ndr64=False)
    bind(client)
    assert bind_reply(client, ack(*results, flags=flags)) is None
    assert client.warnings == [warning]


@pytest.mark.parametrize(
    ("rejection", "warning"),
    [
        (rpc.ContextResult(2, 2, rpc.NDR32), "rejected context carries a transfer syntax"),
        (rpc.ContextResult(2, 1), "host says it does not support the KMS interface"),
        (rpc.ContextResult(2, 0), "unexpected rejection reason 0"),
    ],
)
def test_unusual_rejections_are_warnings(rejection: rpc.ContextResult, warning: str) -> None:
    client = ClientSession()
    bind(client)
    bind_reply(client, ack(rejection, ACCEPT64, ACK3))
    assert client.warnings == [warning]


def test_ndr64_without_btfn_ack_is_a_warning() -> None:
    client = ClientSession()
    bind(client)
    bind_reply(client, ack(REJECT, ACCEPT64, REJECT))
    assert "host accepted NDR64 without acknowledging BTFN" in client.warnings


def test_ndr64_without_btfn_ack_is_warned_once() -> None:
    client = ClientSession()
    bind(client)
    alter = bind_reply(client, ack(REJECT, ACCEPT64, REJECT))
    assert alter is not None
    bind_reply(client, ack(ACCEPT32, alter=True))
    assert client.warnings.count("host accepted NDR64 without acknowledging BTFN") == 1


def test_conc_mpx_on_alter_context_resp_is_a_warning() -> None:
    client = ClientSession()
    bind(client)
    bind_reply(client, ack(REJECT, ACCEPT64, ACK3))
    bind_reply(client, ack(ACCEPT32, alter=True, flags=0x13))
    assert any("CONC_MPX" in warning for warning in client.warnings)


@pytest.mark.parametrize(
    ("stub", "fields", "warning"),
    [
        (ndr.wrap_response(b"abc", TransferSyntax.NDR32), {"alloc_hint": 99}, "alloc_hint 99"),
        (ndr.wrap_response(b"abc", TransferSyntax.NDR32), {"flags": 0x13}, "CONC_MPX"),
        (ndr.wrap_response(b"abc", TransferSyntax.NDR32)[:-1] + b"\x07", {}, "padding"),
        (b"\x03\x00\x00\x00\x04\x00\x00\x00\x03\x00\x00\x00abc" + bytes(5), {}, "referent"),
    ],
    ids=["alloc_hint", "conc_mpx", "padding", "referent"],
)
def test_soft_deviations_in_responses_are_warnings(
    stub: bytes, fields: dict[str, int], warning: str
) -> None:
    client = waiting_client()
    [event] = client.receive_data(response(stub, **fields))
    assert event == ResponseReceived(2, TransferSyntax.NDR32, MESSAGE, b"abc")
    assert len(client.warnings) == 1 and warning in client.warnings[0]


# --- strict checks of responses ----------------------------------------------------------------

GOOD_STUB = ndr.wrap_response(b"abc", TransferSyntax.NDR32)


@pytest.mark.parametrize(
    ("stub", "fields"),
    [
        (GOOD_STUB, {"call_id": 3}),
        (GOOD_STUB, {"context_id": 1}),
        (GOOD_STUB, {"cancel_count": 1}),
        (GOOD_STUB, {"flags": 0x01}),
        (GOOD_STUB[:8], {}),
        (ndr.wrap_response(b"abc", TransferSyntax.NDR64), {}),
    ],
    ids=["call_id", "context", "cancel_count", "not_last", "truncated", "ndr64_stub"],
)
def test_bad_responses_are_protocol_errors(stub: bytes, fields: dict[str, int]) -> None:
    client = waiting_client()
    with pytest.raises(ProtocolError):
        answer(client, response(stub, **fields))


def test_size_differing_from_conformance_is_a_protocol_error() -> None:
    client = waiting_client()
    stub = b"\x04\x00\x00\x00\x00\x00\x02\x00\x03\x00\x00\x00abcd" + bytes(4)
    with pytest.raises(ProtocolError, match="conformance"):
        answer(client, response(stub))


def test_bind_ack_instead_of_a_response_is_a_protocol_error() -> None:
    client = waiting_client()
    with pytest.raises(ProtocolError):
        client.receive_data(ack(ACCEPT32))


@pytest.mark.parametrize("status", [rpc.NCA_UNK_IF, rpc.NCA_OP_RNG_ERROR, 0x1C01000B])
def test_fault_raises_rpc_fault_error(status: int) -> None:
    client = waiting_client()
    [event] = client.receive_data(rpc.encode_pdu(rpc.Fault(2, status)))
    assert event == FaultReceived(2, status)
    with pytest.raises(RpcFaultError) as info:
        expect_response(event)
    assert info.value.status == status and f"{status:08X}" in str(info.value)
    client.send_request(MESSAGE)  # the client may go on after a fault


@pytest.mark.parametrize("syntax", TransferSyntax)
@pytest.mark.parametrize("hresult", [0x8007000D, 0xC004F042, 0xC004F06C, 0x12345678])
def test_error_stub_raises_activation_error(syntax: TransferSyntax, hresult: int) -> None:
    client = ClientSession(btfn=False)
    bind(client)
    bind_reply(client, ack(REJECT, ACCEPT64))
    bind_reply(client, ack(ACCEPT32, alter=True))
    if syntax is TransferSyntax.NDR64:
        client.send_request(MESSAGE)
        answer(client, response(ndr.wrap_response(b"x", TransferSyntax.NDR32)))
    client.send_request(MESSAGE)
    assert client.syntax is syntax
    context = 0 if syntax is TransferSyntax.NDR32 else 1
    raw = response(ndr.wrap_error(hresult, syntax), call_id=client.call_id, context_id=context)
    [event] = client.receive_data(raw)
    assert event == ErrorReceived(client.call_id, syntax, hresult)
    with pytest.raises(ActivationError) as info:
        expect_response(event)
    assert info.value.hresult == hresult and f"{hresult:08X}" in str(info.value)


def test_nonzero_return_value_with_a_message_is_an_activation_error() -> None:
    client = waiting_client()
    stub = ndr.wrap_response(b"abc", TransferSyntax.NDR32, hresult=0xC004F038)
    with pytest.raises(ActivationError) as info:
        answer(client, response(stub))
    assert info.value.hresult == 0xC004F038


# --- framing -----------------------------------------------------------------------------------


def test_replies_wait_for_complete_pdus() -> None:
    client = ClientSession(ndr64=False, btfn=False)
    bind(client)
    first, second = ack(ACCEPT32), response(GOOD_STUB)
    stream = first + second
    assert client.receive_data(stream[:10]) == []
    [accepted] = client.receive_data(stream[10 : len(first) + 5])
    assert accepted == BindAccepted(True, False, None)
    client.send_request(MESSAGE)
    assert client.receive_data(b"") == []
    assert client.receive_data(stream[len(first) + 5 :]) == [
        ResponseReceived(2, TransferSyntax.NDR32, MESSAGE, b"abc")
    ]


def test_a_reply_before_its_request_waits_in_the_buffer() -> None:
    client = bound_client(btfn=False)
    assert client.receive_data(response(GOOD_STUB)) == []  # nothing awaited yet
    client.send_request(MESSAGE)
    events: list[ClientEvent] = client.receive_data(b"")
    assert events == [ResponseReceived(2, TransferSyntax.NDR32, MESSAGE, b"abc")]


def test_a_garbage_header_is_a_framing_error() -> None:
    client = ClientSession()
    bind(client)
    with pytest.raises(FramingError):
        client.receive_data(b"\xff" * 16)


def test_call_id_1_is_tolerated_with_a_warning() -> None:
    # Wine's RPC runtime answers every call with call_id 1 (spec §2).
    client = ClientSession(ndr64=False)
    bind(client)
    assert bind_reply(client, ack(ACCEPT32, ACK3, call_id=1)) is None
    assert any("Wine" in w for w in client.warnings)
