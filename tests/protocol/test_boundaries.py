"""Boundaries, echoes and counters of the protocol core that mutation testing found untested."""

from __future__ import annotations

import dataclasses
from datetime import date

import pytest

from kmsgate.protocol import ndr, rpc
from kmsgate.protocol.client_session import ClientSession
from kmsgate.protocol.engine import EngineConfig, KmsEngine
from kmsgate.protocol.epid import parse_epid
from kmsgate.protocol.errors import KmsMessageError
from kmsgate.protocol.events import (
    ActivationRefused,
    ActivationServed,
    BindCompleted,
    ConnectionClosed,
    FaultSent,
)
from kmsgate.protocol.framing import DEFAULT_MAX_PDU, MAX_REASSEMBLED_STUB
from kmsgate.protocol.hresult import HResult
from kmsgate.protocol.messages import DecodedRequest, encode_request
from kmsgate.protocol.session import ServerSession, SessionSettings
from tests.protocol.test_messages import EPID, HWID, IV, NOW, make_request, seeded
from tests.protocol.test_session import bind_of, bound_server, ndr32_bind, pump, request_pdu

NDR32 = ndr.TransferSyntax.NDR32


def default_server() -> ServerSession:
    """A session on SessionSettings() as shipped: the defaults themselves are under test."""
    engine = KmsEngine(EngineConfig(), lambda _r: EPID)
    return ServerSession(engine, SessionSettings(), random_bytes=seeded(), assoc_group_id=5)


# --- PDU and reassembly size limits, through their defaults -------------------------------------


def test_default_limits_are_the_documented_ones() -> None:
    assert SessionSettings().max_pdu_size == DEFAULT_MAX_PDU == 5840
    assert MAX_REASSEMBLED_STUB == 8192


@pytest.mark.parametrize(("frag_length", "closes"), [(5840, False), (5841, True)])
def test_a_pdu_of_exactly_the_default_maximum_is_read(frag_length: int, closes: bool) -> None:
    server = default_server()
    pump(server, ndr32_bind())
    header = bytearray(request_pdu()[:16])
    header[8:10] = frag_length.to_bytes(2, "little")
    events, out = pump(server, bytes(header))
    assert server.closed is closes
    assert [type(e) for e in events] == ([ConnectionClosed] if closes else [])
    assert out == b""


def _fragmented(total: int) -> bytes:
    """A request whose fragments' stubs add up to exactly `total` bytes."""
    sizes = [4000, 4000, total - 8000]
    flags = [rpc.PFC_FIRST_FRAG, 0, rpc.PFC_LAST_FRAG]
    return b"".join(
        rpc.encode_pdu(rpc.Request(2, 0, 0, bytes(size), flags=flag))
        for size, flag in zip(sizes, flags, strict=True)
    )


@pytest.mark.parametrize(("total", "closes"), [(8192, False), (8193, True)])
def test_a_reassembled_stub_of_exactly_the_limit_is_answered(total: int, closes: bool) -> None:
    server = default_server()
    pump(server, ndr32_bind())
    events, out = pump(server, _fragmented(total))
    if closes:
        assert [type(e) for e in events] == [ConnectionClosed] and out == b""
    else:
        # Zeros are no KMS message: answered with an error stub, the connection stays open.
        assert [type(e) for e in events] == [ActivationRefused] and not server.closed
        assert isinstance(events[0], ActivationRefused)
        assert events[0].hresult == HResult.INVALID_DATA


# --- echoes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("xmit", "recv"), [(4280, 1024), (1024, 5840), (65535, 2048)])
def test_bind_ack_echoes_the_clients_fragment_sizes(xmit: int, recv: int) -> None:
    server = default_server()
    bind = rpc.decode_pdu(bind_of(ClientSession(ndr64=False, btfn=False)))
    assert isinstance(bind, rpc.Bind)
    raw = rpc.encode_pdu(dataclasses.replace(bind, max_xmit_frag=xmit, max_recv_frag=recv))
    _, out = pump(server, raw)
    ack = rpc.decode_pdu(out)
    assert isinstance(ack, rpc.BindAck)
    assert (ack.max_xmit_frag, ack.max_recv_frag) == (xmit, recv)


@pytest.mark.parametrize("context_id", [1, 9, 0xFFFF])
def test_a_fault_carries_the_requests_context_id(context_id: int) -> None:
    server = bound_server()
    events, out = pump(server, request_pdu(context_id=context_id, call_id=11))
    fault = rpc.decode_pdu(out)
    assert isinstance(fault, rpc.Fault) and isinstance(events[0], FaultSent)
    assert (fault.context_id, fault.call_id, fault.status) == (context_id, 11, rpc.NCA_UNK_IF)


@pytest.mark.parametrize("minor", [0, 1, 7])
def test_the_response_carries_the_requests_version(minor: int) -> None:
    engine = KmsEngine(EngineConfig(), lambda _r: EPID)
    request = dataclasses.replace(make_request(6), minor_version=minor)
    response = engine.respond(DecodedRequest(request, 6, b""), NOW)
    assert (response.major_version, response.minor_version) == (6, minor)


# --- counters the host relies on (idle timer, latency metric) ------------------------------------


def test_session_counters_follow_the_conversation() -> None:
    server = default_server()
    counts = []

    def after(data: bytes) -> None:
        pump(server, data)
        counts.append((server.pdus_handled, server.requests_answered, server.requests_served))

    after(ndr32_bind())
    after(request_pdu())  # served
    after(request_pdu(encode_request(make_request(6, required_client_count=1001), IV)))  # refused
    after(request_pdu(context_id=9))  # fault: handled, not answered
    after(request_pdu(call_id=9)[:30])  # half a PDU: nothing handled yet
    assert counts == [(1, 0, 0), (2, 1, 1), (3, 2, 1), (4, 2, 1), (4, 2, 1)]


# --- refusals keep what was decoded --------------------------------------------------------------


def test_a_refusal_when_the_answer_cannot_be_built_keeps_the_request() -> None:
    engine = KmsEngine(EngineConfig(), lambda _r: "9" * 64)  # an ePID too long to encode
    server = ServerSession(engine, SessionSettings(hwid=HWID), random_bytes=seeded(),
                           assoc_group_id=1)  # fmt: skip
    pump(server, ndr32_bind())
    events, _ = pump(server, request_pdu())
    assert len(events) == 1 and isinstance(events[0], ActivationRefused)
    assert events[0].request == make_request(6)
    assert events[0].hresult == HResult.INVALID_DATA


# --- engine ranges and policy ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minutes", "ok"), [(14, False), (15, True), (71_582_788, True), (71_582_789, False)]
)
def test_interval_limits_of_the_wire(minutes: int, ok: bool) -> None:
    for name in ("activation_interval", "renewal_interval"):
        if ok:
            config = EngineConfig(**{name: minutes})  # type: ignore[arg-type]
            assert getattr(config, name) == minutes
        else:
            with pytest.raises(ValueError, match=name):
                EngineConfig(**{name: minutes})  # type: ignore[arg-type]


def test_product_policy_can_be_replaced_and_removed() -> None:
    engine = KmsEngine(EngineConfig(), lambda _r: EPID)
    decoded = DecodedRequest(make_request(6), 6, b"")
    assert engine.respond(decoded, NOW).epid == EPID
    engine.set_product_policy(lambda _r: HResult.PRODUCT_NOT_ALLOWED)
    with pytest.raises(KmsMessageError) as refused:
        engine.respond(decoded, NOW)
    assert refused.value.hresult == HResult.PRODUCT_NOT_ALLOWED
    engine.set_product_policy(None)
    assert engine.respond(decoded, NOW).epid == EPID


def test_served_event_after_policy_reload_through_a_session() -> None:
    engine = KmsEngine(EngineConfig(), lambda _r: EPID)
    server = ServerSession(engine, SessionSettings(), random_bytes=seeded(), assoc_group_id=1)
    events, _ = pump(server, ndr32_bind() + request_pdu())
    assert [type(e) for e in events] == [BindCompleted, ActivationServed]
    engine.set_product_policy(lambda _r: HResult.PRODUCT_NOT_ALLOWED)
    events, _ = pump(server, request_pdu(call_id=3))
    assert isinstance(events[0], ActivationRefused)
    assert events[0].hresult == HResult.PRODUCT_NOT_ALLOWED


# --- ePID dates ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("year", "leap"), [(2000, True), (2020, True), (2024, True), (2100, False), (2023, False)]
)
def test_day_366_exists_only_in_leap_years(year: int, leap: bool) -> None:
    text = f"03612-00206-556-123727-03-1033-17763.0000-366{year}"
    if leap:
        assert parse_epid(text).activation_date == date(year, 12, 31)
    else:
        with pytest.raises(ValueError, match="impossible activation date"):
            parse_epid(text)
    assert parse_epid(f"03612-00206-556-123727-03-1033-17763.0000-365{year}").activation_date == (
        date(year, 12, 31 if not leap else 30)
    )


@pytest.mark.parametrize(("year", "ok"), [(1989, False), (1990, True)])
def test_epid_years_start_in_1990(year: int, ok: bool) -> None:
    text = f"03612-00206-556-123727-03-1033-17763.0000-001{year}"
    if ok:
        assert parse_epid(text).activation_date == date(year, 1, 1)
    else:
        with pytest.raises(ValueError, match="impossible activation date"):
            parse_epid(text)
