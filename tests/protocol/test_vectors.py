"""Every captured vlmcs <-> vlmcsd conversation, decoded, verified and replayed against us."""

from __future__ import annotations

import os
import uuid

import pytest

from kmsgate.protocol import ndr, rpc
from kmsgate.protocol.engine import EngineConfig, KmsEngine
from kmsgate.protocol.errors import KmsMessageError
from kmsgate.protocol.events import (
    ActivationRefused,
    ActivationServed,
    BindCompleted,
    ConnectionClosed,
    FaultSent,
)
from kmsgate.protocol.hresult import HResult
from kmsgate.protocol.messages import KmsRequest, decode_request
from kmsgate.protocol.ndr import TransferSyntax
from kmsgate.protocol.session import ServerSession, SessionSettings
from kmsgate.protocol.verification import verify_response
from tests import vectors

NAMES = vectors.conversation_names()
VECTOR_NOW = 134398385640000000  # 2026-11-22 16:29:24 UTC, the capture day
RETAIL_WIN10_HOME = uuid.UUID("e1c51358-fe3e-4203-a4a2-3b6b20c9734e")


def _syntaxes(conv: vectors.Conversation) -> dict[int, TransferSyntax]:
    """Context id -> syntax as proposed by the client's binds (later binds win)."""
    mapping: dict[int, TransferSyntax] = {}
    for direction, raw in conv.pdus:
        if direction != "c2s" or not raw or raw[2] not in (rpc.PType.BIND, rpc.PType.ALTER_CONTEXT):
            continue
        bind = rpc.decode_pdu(raw)
        assert isinstance(bind, rpc.Bind)
        for ctx in bind.contexts:
            if ctx.transfer_syntaxes[0] == rpc.NDR64:
                mapping[ctx.context_id] = TransferSyntax.NDR64
            elif ctx.transfer_syntaxes[0] == rpc.NDR32:
                mapping[ctx.context_id] = TransferSyntax.NDR32
    return mapping


def _request_message(conv: vectors.Conversation, index: int) -> tuple[bytes, TransferSyntax]:
    raw = conv.pdus[index][1]
    assert raw is not None
    pdu = rpc.decode_pdu(raw)
    assert isinstance(pdu, rpc.Request)
    syntax = _syntaxes(conv).get(pdu.context_id, TransferSyntax.NDR32)
    return ndr.unwrap_request(pdu.stub, syntax), syntax


def _check_fields(request: KmsRequest, expected: dict[str, object]) -> None:
    actual = {
        "version": f"{request.major_version}.{request.minor_version}",
        "is_client_vm": request.is_client_vm,
        "license_status": request.license_status,
        "grace_time_minutes": request.grace_time,
        "application_id": str(request.application_id),
        "sku_id": str(request.sku_id),
        "kms_counted_id": str(request.kms_counted_id),
        "client_machine_id": str(request.client_machine_id),
        "previous_client_machine_id": str(request.previous_client_machine_id),
        "required_client_count": request.required_client_count,
        "request_time_filetime": request.request_time,
        "machine_name": request.machine_name,
    }
    compared = 0
    for key, value in expected.items():
        if key in actual and value is not None:
            assert actual[key] == value, key
            compared += 1
    assert compared >= 4, "a vector with too few decoded fields to compare"


def test_all_vector_files_are_covered() -> None:
    assert len(NAMES) == 37


@pytest.mark.parametrize("name", NAMES)
def test_requests_decode_to_the_captured_fields(name: str) -> None:
    conv = vectors.load(name)
    for exchange in conv.exchanges:
        message, _ = _request_message(conv, exchange.request_pdu)
        if exchange.outcome == "fault":
            continue
        if exchange.hresult == HResult.INVALID_DATA:
            with pytest.raises(KmsMessageError):
                decoded = decode_request(message)
                if not decoded.mac_valid or decoded.request.required_client_count > 1000:
                    raise KmsMessageError("refused by policy")
            continue
        decoded = decode_request(message)
        _check_fields(decoded.request, exchange.request)
        # Only the crafted stale-MAC vector carries a wrong v4 MAC.
        assert decoded.mac_valid == (name != "vlmcsd_err_time_c1_stalemac")


@pytest.mark.parametrize("name", NAMES)
def test_captured_responses_pass_the_strict_verifier(name: str) -> None:
    conv = vectors.load(name)
    verified = 0
    for exchange in conv.exchanges:
        if exchange.answer_pdu is None or exchange.outcome != "ok":
            continue
        message, syntax = _request_message(conv, exchange.request_pdu)
        answer = conv.pdus[exchange.answer_pdu][1]
        assert answer is not None
        pdu = rpc.decode_pdu(answer)
        assert isinstance(pdu, rpc.Response)
        stub = ndr.unwrap_response(pdu.stub, syntax)
        assert stub.hresult == 0 and stub.message is not None
        result = verify_response(message, stub.message)
        # vlmcsd's counting mode (count_M1_E1) reports fewer clients than N; vlmcs ignores that.
        failed = [c for c in result.checks if not c.passed and c.name != "client_count"]
        assert not failed
        expected = exchange.response
        assert result.response.epid == expected["epid"]
        if expected.get("client_machine_id"):
            assert str(result.response.client_machine_id) == expected["client_machine_id"]
        if expected.get("current_client_count") is not None:
            assert result.response.current_client_count == expected["current_client_count"]
        if expected.get("hwid"):
            assert result.hwid is not None and result.hwid.hex().upper() == expected["hwid"]
        verified += 1
    if any(e.outcome == "ok" and e.answer_pdu is not None for e in conv.exchanges):
        assert verified


def _policy(refuse: set[uuid.UUID]):  # type: ignore[no-untyped-def]
    def policy(request: KmsRequest) -> HResult | None:
        if request.kms_counted_id in refuse:
            return HResult.PRODUCT_NOT_ALLOWED
        return None

    return policy


def _session_for(conv: vectors.Conversation, epid: str) -> ServerSession:
    command = conv.server_command
    config = EngineConfig(
        max_clock_skew=4 * 3600 if "-c1" in command else None,
        verify_v4_mac="-c1" not in command,
    )
    refuse: set[uuid.UUID] = set()
    if "-K3" in command or "-K2" in command:
        refuse = {uuid.UUID("01234567-89ab-4cde-8f01-23456789abcd"), RETAIL_WIN10_HOME}
    engine = KmsEngine(config, lambda _request: epid, _policy(refuse))
    settings = SessionSettings(
        port=conv.port, ndr64=conv.ndr64, btfn=conv.btfn, hwid=bytes.fromhex("3a1c049600b60076")
    )
    return ServerSession(engine, settings, random_bytes=os.urandom, assoc_group_id=0x1234)


@pytest.mark.parametrize("name", NAMES)
def test_replayed_conversation_gets_equivalent_answers(name: str) -> None:
    conv = vectors.load(name)
    epid = next((e.response["epid"] for e in conv.exchanges if e.response.get("epid")), None)
    session = _session_for(conv, epid or "03612-00206-556-123727-03-1033-17763.0000-2972018")
    syntaxes = _syntaxes(conv)
    for index, raw in conv.client_pdus():
        events = session.receive_data(raw, VECTOR_NOW)
        ours = session.data_to_send()
        theirs = conv.answer_to(index)
        if theirs is None:
            assert isinstance(events[-1], ConnectionClosed) and not ours
            continue
        assert ours[2] == theirs[2], "PDU type differs"
        mine, captured = rpc.decode_pdu(ours), rpc.decode_pdu(theirs)
        if isinstance(mine, rpc.BindAck):
            assert isinstance(captured, rpc.BindAck) and isinstance(events[0], BindCompleted)
            assert mine.results == captured.results
            assert mine.secondary_address == captured.secondary_address
            assert mine.flags == captured.flags
            assert (mine.max_xmit_frag, mine.max_recv_frag) == (
                captured.max_xmit_frag,
                captured.max_recv_frag,
            )
        elif isinstance(mine, rpc.Fault):
            assert isinstance(captured, rpc.Fault) and isinstance(events[0], FaultSent)
            assert mine.status == captured.status
            assert mine.call_id == raw[12]  # echoed, unlike vlmcsd's constant 2
        else:
            assert isinstance(mine, rpc.Response) and isinstance(captured, rpc.Response)
            assert (mine.call_id, mine.context_id) == (captured.call_id, captured.context_id)
            request = rpc.decode_pdu(raw)
            assert isinstance(request, rpc.Request)
            syntax = syntaxes.get(request.context_id, TransferSyntax.NDR32)
            ours_stub = ndr.unwrap_response(mine.stub, syntax)
            theirs_stub = ndr.unwrap_response(captured.stub, syntax)
            assert ours_stub.hresult == theirs_stub.hresult
            if ours_stub.message is None:
                assert isinstance(events[0], ActivationRefused)
                assert mine.stub == captured.stub  # error stubs are deterministic
                continue
            assert isinstance(events[0], ActivationServed)
            message = ndr.unwrap_request(request.stub, syntax)
            assert verify_response(message, ours_stub.message).ok
            assert len(mine.stub) == len(captured.stub)
