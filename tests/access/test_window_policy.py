"""An admitted window's request policy in the sans-IO session, the refusal tally, backend health."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from kmsgate.access.admission import WindowRequestPolicy
from kmsgate.access.audit_trail import RefusalTally
from kmsgate.access.gateway import BackendHealth
from kmsgate.observability.metrics import Metrics
from kmsgate.protocol.client_session import ClientSession
from kmsgate.protocol.engine import (
    FILETIME_TICKS_PER_SECOND,
    EngineConfig,
    KmsEngine,
    unix_from_filetime,
)
from kmsgate.protocol.errors import ActivationError
from kmsgate.protocol.events import ActivationRefused, ActivationServed
from kmsgate.protocol.messages import encode_request
from kmsgate.protocol.session import PolicyRefusal, RequestPolicy, ServerSession, SessionSettings
from tests.protocol.test_messages import EPID, HWID, IV, NOW, make_request, seeded
from tests.protocol.test_session import activate, answer_of, handshake, pump, request_of

EXCEL_2016 = uuid.UUID("c3e65d36-141f-4d2f-a303-a842ee756a29")
OFFICE_APP = uuid.UUID("0ff1ce15-a989-479d-af46-f275c6370663")
OFFICE_2016_KMS = uuid.UUID("85b5f61b-320b-4be3-814a-b76b2bfafc82")
ENDS = datetime.fromtimestamp(unix_from_filetime(NOW), UTC) + timedelta(seconds=120)
T0 = datetime(2026, 11, 24, 10, 0, 30, tzinfo=UTC)


def server_with(policy: RequestPolicy | None) -> ServerSession:
    engine = KmsEngine(EngineConfig(), lambda _r: EPID)
    return ServerSession(
        engine,
        SessionSettings(hwid=HWID),
        random_bytes=seeded(),
        assoc_group_id=0x1234,
        request_policy=policy,
    )


def machine(n: int) -> uuid.UUID:
    return uuid.UUID(int=0x5D7F9B13_C4E6_4081_8C2D_000000000000 + n)


def test_policy_binds_the_first_machine_and_serves_its_other_products() -> None:
    policy = WindowRequestPolicy(ENDS)
    first = make_request(client_machine_id=machine(1))
    assert policy(first, NOW) is None
    office = make_request(
        client_machine_id=machine(1),
        application_id=OFFICE_APP,
        sku_id=EXCEL_2016,
        kms_counted_id=OFFICE_2016_KMS,
    )
    assert policy(office, NOW + 1) is None
    refusal = policy(make_request(client_machine_id=machine(2)), NOW + 2)
    assert refusal == PolicyRefusal(
        0xC004F042, f"the window serves client machine {machine(1)} only"
    )
    assert policy(first, NOW + 3) is None  # the bound machine keeps being served


def test_policy_refuses_everything_from_the_window_end_on() -> None:
    policy = WindowRequestPolicy(ENDS)
    ends = NOW + 120 * FILETIME_TICKS_PER_SECOND
    request = make_request(client_machine_id=machine(1))
    assert policy(request, ends - 1) is None
    for late in (ends, ends + FILETIME_TICKS_PER_SECOND):
        refusal = policy(request, late)
        assert refusal is not None and refusal.hresult == 0xC004F042
        assert refusal.reason == "the activation window has ended"


def test_session_refuses_other_machines_with_an_event_carrying_the_request() -> None:
    """G1 in memory: five machine ids on one connection, one served."""
    server = server_with(WindowRequestPolicy(ENDS))
    client = ClientSession()
    handshake(server, client)
    served: list[uuid.UUID] = []
    refused: list[ActivationRefused] = []
    for n in range(5):
        request = make_request(client_machine_id=machine(n))
        message = encode_request(request, IV)
        events, reply = pump(server, request_of(client, message))
        try:
            answer_of(client, reply)
        except ActivationError as exc:
            assert exc.hresult == 0xC004F042
        else:
            served.append(request.client_machine_id)
        for event in events:
            if isinstance(event, ActivationServed):
                assert event.request.client_machine_id == machine(0)
            elif isinstance(event, ActivationRefused):
                refused.append(event)
    assert served == [machine(0)]
    assert [e.request.client_machine_id for e in refused if e.request] == [
        machine(n) for n in range(1, 5)
    ]
    assert {(e.hresult, e.reason) for e in refused} == {
        (0xC004F042, f"the window serves client machine {machine(0)} only")
    }
    assert server.requests_served == 1 and server.requests_answered == 5
    assert not server.closed  # a refusal, not a broken connection


def test_session_serves_one_machines_several_products() -> None:
    server = server_with(WindowRequestPolicy(ENDS))
    client = ClientSession()
    handshake(server, client)
    products = [
        make_request(client_machine_id=machine(7)),
        make_request(
            client_machine_id=machine(7),
            application_id=OFFICE_APP,
            sku_id=EXCEL_2016,
            kms_counted_id=OFFICE_2016_KMS,
        ),
    ]
    for request in products:
        events, verified = activate(server, client, request)
        assert verified and [type(e) for e in events] == [ActivationServed]


def test_session_without_a_policy_is_unchanged() -> None:
    server = server_with(None)
    client = ClientSession()
    handshake(server, client)
    for n in range(3):
        _, verified = activate(server, client, make_request(client_machine_id=machine(n)))
        assert verified


def test_refusal_tally_aggregates_per_source_and_minute() -> None:
    tally = RefusalTally(max_sources=100)
    for i in range(300):
        tally.add(f"127.0.0.{i % 3 + 1}", "no open activation window", T0)
    tally.add("127.0.0.1", "no open activation window", T0 + timedelta(minutes=1))
    # Only the minute that has ended is taken before its end.
    done = tally.take("n1", before=T0 + timedelta(seconds=40))
    assert sorted((e.address, e.count) for e in done) == [
        ("127.0.0.1", 100),
        ("127.0.0.2", 100),
        ("127.0.0.3", 100),
    ]
    assert all(e.kind == "connection_refused" and e.time == T0 for e in done)
    assert "100 connection(s) from this source in the minute from 10:00 UTC" in done[0].detail
    rest = tally.take("n1")
    assert [(e.address, e.count) for e in rest] == [("127.0.0.1", 1)]
    assert len(tally) == 0


def test_refusal_tally_memory_is_bounded() -> None:
    tally = RefusalTally(max_sources=8)
    for i in range(5000):
        tally.add(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", "no open activation window", T0)
        assert len(tally) <= 9  # 8 sources and the "other sources" row
    rows = tally.take("n1")
    assert sum(e.count for e in rows) == 5000
    other = [e for e in rows if e.address is None]
    assert len(other) == 1 and other[0].count == 5000 - 8
    assert "sources beyond the first 8" in other[0].detail


def test_backend_health_warns_once_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    health = BackendHealth("pop3", metrics)
    caplog.set_level(logging.INFO, logger="kmsgate.gateway")

    def gauge() -> float | None:
        return metrics.registry.get_sample_value("kmsgate_account_backend_up", {"backend": "pop3"})

    assert gauge() is None  # unknown before the first login
    health.answered()
    assert gauge() == 1 and not caplog.records
    for _ in range(3):
        health.unavailable("ConnectionRefusedError: refused")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "pop3 account server unavailable" in warnings[0].getMessage()
    assert gauge() == 0
    health.answered()
    health.answered()
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert [r.getMessage() for r in infos] == ["pop3 account server answers again"]
    assert gauge() == 1
