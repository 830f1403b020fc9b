"""Promises of the host session and engine that mutation testing (mutmut) found unasserted.

Only public behaviour is used: bytes into ServerSession.receive_data, events and
data_to_send() out, KmsEngine.respond, and the session's public counters.
"""

from __future__ import annotations

import dataclasses

import pytest

from kmsgate.protocol import ndr, rpc
from kmsgate.protocol.engine import EngineConfig, KmsEngine
from kmsgate.protocol.errors import KmsMessageError
from kmsgate.protocol.hresult import HResult
from kmsgate.protocol.messages import DecodedRequest, KmsRequest, encode_request
from kmsgate.protocol.session import (
    ActivationRefused,
    ActivationServed,
    BindCompleted,
    ConnectionClosed,
    FaultSent,
    PolicyRefusal,
    RequestPolicy,
    ServerSession,
    SessionSettings,
)
from kmsgate.protocol.verification import verify_response
from tests.protocol.test_messages import EPID, HWID, IV, NOW, make_request, seeded

NDR32 = ndr.TransferSyntax.NDR32


class RecordingEpid:
    """An ePID provider that remembers which requests the engine answered."""

    def __init__(self) -> None:
        self.asked: list[KmsRequest] = []

    def __call__(self, request: KmsRequest) -> str:
        self.asked.append(request)
        return EPID


def server_with(
    *,
    epid_for: RecordingEpid | None = None,
    request_policy: RequestPolicy | None = None,
    assoc_group_id: int = 7,
) -> ServerSession:
    engine = KmsEngine(EngineConfig(), epid_for or RecordingEpid())
    return ServerSession(
        engine,
        SessionSettings(hwid=HWID),
        random_bytes=seeded(),
        assoc_group_id=assoc_group_id,
        request_policy=request_policy,
    )


def bind_pdu(*, alter: bool = False, flags: int = rpc.PFC_SINGLE, call_id: int = 1) -> bytes:
    context = rpc.ContextElement(0, rpc.KMS_INTERFACE_SYNTAX, (rpc.NDR32,))
    return rpc.encode_pdu(rpc.Bind(call_id, (context,), flags=flags, alter=alter))


def request_pdu(
    request: KmsRequest | None = None,
    *,
    call_id: int = 2,
    context_id: int = 0,
    opnum: int = 0,
    flags: int = rpc.PFC_SINGLE,
    stub: bytes | None = None,
) -> bytes:
    if stub is None:
        stub = ndr.wrap_request(encode_request(request or make_request(6), IV), NDR32)
    return rpc.encode_pdu(rpc.Request(call_id, context_id, opnum, stub, flags=flags))


def feed(server: ServerSession, data: bytes) -> tuple[list[object], bytes]:
    events = server.receive_data(data, NOW)
    return list(events), server.data_to_send()


def bound(server: ServerSession) -> ServerSession:
    events, _ = feed(server, bind_pdu())
    assert [type(e) for e in events] == [BindCompleted]
    return server


def only_response(out: bytes) -> rpc.Response:
    pdu = rpc.decode_pdu(out)
    assert isinstance(pdu, rpc.Response) and len(out) == rpc.parse_header(out).frag_length
    return pdu


# --- the per-connection request policy ----------------------------------------------------------


def test_request_policy_refusal_is_answered_before_the_engine_is_asked() -> None:
    seen: list[tuple[KmsRequest, int]] = []

    def policy(request: KmsRequest, now: int) -> PolicyRefusal | None:
        seen.append((request, now))
        return PolicyRefusal(HResult.PRODUCT_NOT_ALLOWED, "second machine id on one connection")

    epid = RecordingEpid()
    server = bound(server_with(epid_for=epid, request_policy=policy))
    events, out = feed(server, request_pdu(make_request(5), call_id=4))

    assert events == [
        ActivationRefused(
            4, NDR32, make_request(5), HResult.PRODUCT_NOT_ALLOWED,
            "second machine id on one connection",
        )
    ]  # fmt: skip
    response = only_response(out)
    assert (response.call_id, response.context_id) == (4, 0)
    assert ndr.unwrap_response(response.stub, NDR32) == ndr.ResponseStub(
        None, HResult.PRODUCT_NOT_ALLOWED
    )
    assert seen == [(make_request(5), NOW)]
    assert epid.asked == []  # the engine never saw it: a refused request is no client
    assert (server.requests_answered, server.requests_served) == (1, 0)


def test_request_policy_that_lets_a_request_pass_leaves_the_answer_to_the_engine() -> None:
    seen: list[tuple[KmsRequest, int]] = []

    def policy(request: KmsRequest, now: int) -> PolicyRefusal | None:
        seen.append((request, now))
        return None

    epid = RecordingEpid()
    server = bound(server_with(epid_for=epid, request_policy=policy))
    events, out = feed(server, request_pdu(call_id=6))
    assert len(events) == 1 and isinstance(events[0], ActivationServed)
    assert events[0].request == make_request(6) and events[0].response.epid == EPID
    reply = ndr.unwrap_response(only_response(out).stub, NDR32)
    assert reply.hresult == 0 and reply.message is not None
    verified = verify_response(encode_request(make_request(6), IV), reply.message)
    assert verified.ok and verified.response == events[0].response
    assert seen == [(make_request(6), NOW)] and epid.asked == [make_request(6)]


def test_request_policy_sees_every_request_of_the_connection_in_order() -> None:
    machines = [make_request(6, machine_name=f"pc{i}") for i in range(3)]
    seen: list[str] = []

    def first_machine_only(request: KmsRequest, _now: int) -> PolicyRefusal | None:
        seen.append(request.machine_name)
        if request.machine_name != "pc0":
            return PolicyRefusal(HResult.TOO_MANY_CLIENTS, f"{request.machine_name} refused")
        return None

    server = bound(server_with(request_policy=first_machine_only))
    kinds = []
    for call_id, request in enumerate(machines, start=2):
        events, out = feed(server, request_pdu(request, call_id=call_id))
        kinds.append(type(events[0]))
        assert only_response(out).call_id == call_id
    assert kinds == [ActivationServed, ActivationRefused, ActivationRefused]
    assert seen == ["pc0", "pc1", "pc2"]
    assert (server.requests_answered, server.requests_served) == (3, 1)


# --- counters, association group, alter_context ---------------------------------------------------


def test_every_answer_counts_once() -> None:
    server = bound(server_with())
    for call_id in range(2, 6):
        feed(server, request_pdu(call_id=call_id))
    assert (server.pdus_handled, server.requests_answered, server.requests_served) == (5, 4, 4)


@pytest.mark.parametrize(("given", "sent"), [(0, 1), (1, 1), (2, 2), (0xFFFFFFFF, 0xFFFFFFFF)])
def test_bind_ack_carries_the_association_group_and_never_zero(given: int, sent: int) -> None:
    server = server_with(assoc_group_id=given)
    _, out = feed(server, bind_pdu())
    ack = rpc.decode_pdu(out)
    assert isinstance(ack, rpc.BindAck) and ack.assoc_group_id == sent


@pytest.mark.parametrize("client_flags", [rpc.PFC_SINGLE, rpc.PFC_SINGLE | rpc.PFC_CONC_MPX])
def test_alter_context_resp_flags_are_exactly_first_and_last(client_flags: int) -> None:
    server = bound(server_with())
    _, out = feed(server, bind_pdu(alter=True, flags=client_flags, call_id=2))
    assert out[3] == rpc.PFC_SINGLE


# --- fragments ---------------------------------------------------------------------------------


def _fragments(call_id: int, first: bytes, last: bytes) -> bytes:
    return request_pdu(call_id=call_id, stub=first, flags=rpc.PFC_FIRST_FRAG) + request_pdu(
        call_id=call_id, stub=last, flags=rpc.PFC_LAST_FRAG
    )


def test_a_stray_continuation_after_a_completed_fragmented_call_closes() -> None:
    server = bound(server_with())
    stub = ndr.wrap_request(encode_request(make_request(6), IV), NDR32)
    events, out = feed(server, _fragments(3, stub[:100], stub[100:]))
    assert len(events) == 1 and isinstance(events[0], ActivationServed)
    assert only_response(out).call_id == 3
    events, out = feed(server, request_pdu(call_id=3, stub=bytes(8), flags=rpc.PFC_LAST_FRAG))
    assert len(events) == 1 and isinstance(events[0], ConnectionClosed)
    assert events[0].reason == "continuation fragment of call 3 without a first fragment"
    assert out == b"" and server.closed


def test_a_continuation_on_a_fresh_connection_is_named_as_such() -> None:
    server = bound(server_with())
    events, _ = feed(server, request_pdu(stub=bytes(8), flags=0))
    assert len(events) == 1 and isinstance(events[0], ConnectionClosed)
    assert events[0].reason == "continuation fragment of call 2 without a first fragment"


def test_fragments_that_change_call_are_named_as_such() -> None:
    server = bound(server_with())
    events, _ = feed(
        server,
        request_pdu(call_id=3, stub=bytes(8), flags=rpc.PFC_FIRST_FRAG)
        + request_pdu(call_id=4, stub=bytes(8), flags=rpc.PFC_LAST_FRAG),
    )
    assert len(events) == 1 and isinstance(events[0], ConnectionClosed)
    assert events[0].reason == (
        "fragments of one call disagree on call_id, context or opnum (call 4 continues call 3)"
    )


def test_oversized_reassembly_is_named_as_such() -> None:
    server = bound(server_with())
    events, _ = feed(server, _fragments(3, bytes(4096), bytes(4097)))
    assert len(events) == 1 and isinstance(events[0], ConnectionClosed)
    assert events[0].reason == "fragmented call 3 too large (over 8192 bytes)"


# --- reasons reported for the logs and the audit trail -----------------------------------------


def test_close_reasons_name_the_fault() -> None:
    server = server_with()
    events, _ = feed(server, b"\x04" + bytes(15))
    assert isinstance(events[0], ConnectionClosed)
    assert "unsupported RPC version 4.0" in events[0].reason

    server = server_with()
    events, _ = feed(server, rpc.encode_pdu(rpc.Fault(2, rpc.NCA_UNK_IF)))
    assert isinstance(events[0], ConnectionClosed)
    assert events[0].reason == "unexpected Fault PDU from a client"

    server = server_with()
    truncated = bytearray(bind_pdu()[:24])
    truncated[8:10] = (24).to_bytes(2, "little")
    events, _ = feed(server, bytes(truncated))
    assert isinstance(events[0], ConnectionClosed)
    assert "bind" in events[0].reason and "too short" in events[0].reason

    server = server_with()
    events, _ = feed(server, rpc.encode_pdu(rpc.Bind(1, ())))
    assert isinstance(events[0], ConnectionClosed)
    assert events[0].reason == "bind without presentation contexts"


def test_fault_reasons_name_the_context_or_the_operation() -> None:
    server = bound(server_with())
    events, _ = feed(server, request_pdu(context_id=9, call_id=3))
    assert events == [FaultSent(3, rpc.NCA_UNK_IF, "context 9 unbound")]
    events, _ = feed(server, request_pdu(opnum=3, call_id=4))
    assert events == [FaultSent(4, rpc.NCA_OP_RNG_ERROR, "opnum 3")]


def test_refusal_reasons_say_why() -> None:
    server = bound(server_with())
    events, _ = feed(server, request_pdu(make_request(6, required_client_count=1001)))
    assert isinstance(events[0], ActivationRefused)
    assert events[0].reason == "N-count 1001 exceeds 1000"

    engine = KmsEngine(EngineConfig(), lambda _r: "9" * 64)  # an ePID too long to encode
    server = bound(ServerSession(engine, SessionSettings(), random_bytes=seeded(),
                                 assoc_group_id=1))  # fmt: skip
    events, _ = feed(server, request_pdu())
    assert isinstance(events[0], ActivationRefused) and events[0].request == make_request(6)
    assert "ePID" in events[0].reason


# --- engine ------------------------------------------------------------------------------------


def _refusal(engine: KmsEngine, decoded: DecodedRequest) -> KmsMessageError:
    with pytest.raises(KmsMessageError) as info:
        engine.respond(decoded, NOW)
    return info.value


def test_engine_refusal_reasons() -> None:
    engine = KmsEngine(EngineConfig(max_clock_skew=60), lambda _r: EPID)
    bad_mac = _refusal(engine, DecodedRequest(make_request(4), 4, b"", mac_valid=False))
    assert (bad_mac.reason, bad_mac.hresult) == (
        "v4 request MAC does not match its content",
        HResult.INVALID_DATA,
    )
    late = dataclasses.replace(make_request(6), request_time=NOW - 61 * 10_000_000)
    skew = _refusal(engine, DecodedRequest(late, 6, b""))
    assert (skew.reason, skew.hresult) == (
        "client clock differs from the host by too much",
        HResult.TIME_SKEW,
    )
    engine.set_product_policy(lambda _r: HResult.PRODUCT_NOT_ALLOWED)
    policy = _refusal(engine, DecodedRequest(make_request(6), 6, b""))
    assert (policy.reason, policy.hresult) == ("product refused by policy", 0xC004F042)


@pytest.mark.parametrize("count", [-1, 0x1_0000_0000])
def test_client_count_out_of_range_names_the_setting(count: int) -> None:
    with pytest.raises(ValueError, match=f"client_count out of range: {count}"):
        EngineConfig(client_count=count)
