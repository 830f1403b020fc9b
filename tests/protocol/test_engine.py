"""KmsEngine: the host policy of spec §13."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import pytest

from kmsgate.protocol.engine import (
    EngineConfig,
    KmsEngine,
    ProductPolicy,
    filetime_from_unix,
    unix_from_filetime,
)
from kmsgate.protocol.errors import KmsMessageError
from kmsgate.protocol.hresult import HResult
from kmsgate.protocol.messages import DecodedRequest, KmsRequest, KmsResponse
from tests.protocol.test_messages import EPID, NOW, make_request

HOUR = 3600 * 10_000_000  # FILETIME ticks


def _decoded(request: KmsRequest, *, mac_valid: bool = True) -> DecodedRequest:
    return DecodedRequest(request, request.major_version, b"", mac_valid=mac_valid)


def _engine(
    config: EngineConfig | None = None, product_policy: ProductPolicy | None = None
) -> KmsEngine:
    return KmsEngine(config or EngineConfig(), lambda _request: EPID, product_policy)


def _respond(engine: KmsEngine, request: KmsRequest, now: int = NOW, **kwargs: bool) -> KmsResponse:
    return engine.respond(_decoded(request, **kwargs), now)


def _refusal(engine: KmsEngine, request: KmsRequest, now: int = NOW, **kwargs: bool) -> int:
    with pytest.raises(KmsMessageError) as info:
        _respond(engine, request, now, **kwargs)
    return info.value.hresult


@pytest.mark.parametrize("major", [4, 5, 6])
def test_response_copies_the_request_fields_of_spec_section_13_1(major: int) -> None:
    request = make_request(major, client_machine_id=uuid.uuid4(), request_time=NOW - 12345)
    response = _respond(_engine(), request, now=NOW + 7 * HOUR)
    assert response == KmsResponse(
        major_version=major,
        minor_version=0,
        epid=EPID,
        client_machine_id=request.client_machine_id,
        response_time=NOW - 12345,  # the request's time, not the host clock
        current_client_count=10,
        activation_interval=120,
        renewal_interval=10080,
    )


@pytest.mark.parametrize(("n_count", "reported"), [(0, 1), (1, 2), (5, 10), (25, 50), (1000, 2000)])
def test_default_client_count_is_twice_the_n_count(n_count: int, reported: int) -> None:
    response = _respond(_engine(), make_request(required_client_count=n_count))
    assert response.current_client_count == reported


@pytest.mark.parametrize("configured", [0, 3, 50, 0xFFFFFFFF])
def test_configured_client_count_is_reported_as_is(configured: int) -> None:
    engine = _engine(EngineConfig(client_count=configured))
    for n_count in (0, 5, 25):
        response = _respond(engine, make_request(required_client_count=n_count))
        assert response.current_client_count == configured


@pytest.mark.parametrize("n_count", [1001, 5000, 0xFFFFFFFF])
def test_n_count_above_1000_is_invalid_data(n_count: int) -> None:
    engine = _engine(EngineConfig(client_count=10))
    assert _refusal(engine, make_request(required_client_count=n_count)) == HResult.INVALID_DATA


def test_epid_provider_sees_the_request() -> None:
    seen: list[KmsRequest] = []

    def epid_for(request: KmsRequest) -> str:
        seen.append(request)
        return "epid-for-" + request.machine_name

    response = _respond(KmsEngine(EngineConfig(), epid_for), make_request(machine_name="pc1"))
    assert response.epid == "epid-for-pc1" and seen == [make_request(machine_name="pc1")]


@pytest.mark.parametrize(
    ("skew", "accepted"),
    [(0, True), (4 * HOUR, True), (-4 * HOUR, True), (4 * HOUR + 1, False), (-4 * HOUR - 1, False)],
)
def test_clock_skew_check_uses_the_injected_clock(skew: int, accepted: bool) -> None:
    engine = _engine(EngineConfig(max_clock_skew=4 * 3600))
    request = make_request(request_time=NOW + skew)
    if accepted:
        assert _respond(engine, request, now=NOW).response_time == NOW + skew
    else:
        assert _refusal(engine, request, now=NOW) == 0xC004F06C


def test_clock_skew_is_not_checked_by_default() -> None:
    request = make_request(request_time=NOW - 24 * 365 * HOUR)
    assert _respond(_engine(), request, now=NOW).response_time == request.request_time


def test_product_policy_refusal_becomes_the_hresult() -> None:
    refused = uuid.UUID("01234567-89ab-4cde-8f01-23456789abcd")

    def policy(request: KmsRequest) -> HResult | None:
        return HResult.PRODUCT_NOT_ALLOWED if request.kms_counted_id == refused else None

    engine = _engine(product_policy=policy)
    assert _refusal(engine, make_request(kms_counted_id=refused)) == 0xC004F042
    assert _respond(engine, make_request()).epid == EPID


@pytest.mark.parametrize(("verify", "accepted"), [(True, False), (False, True)])
def test_bad_v4_mac_is_refused_unless_verification_is_off(verify: bool, accepted: bool) -> None:
    engine = _engine(EngineConfig(verify_v4_mac=verify))
    if accepted:
        assert _respond(engine, make_request(4), mac_valid=False).major_version == 4
    else:
        assert _refusal(engine, make_request(4), mac_valid=False) == HResult.INVALID_DATA


def test_refusals_are_checked_in_a_fixed_order() -> None:
    engine = _engine(
        EngineConfig(max_clock_skew=60), product_policy=lambda _r: HResult.PRODUCT_NOT_ALLOWED
    )
    late = make_request(request_time=NOW + 10 * HOUR)
    assert _refusal(engine, late) == HResult.TIME_SKEW
    assert _refusal(engine, make_request()) == HResult.PRODUCT_NOT_ALLOWED
    assert _refusal(engine, make_request(4), mac_valid=False) == HResult.INVALID_DATA


@pytest.mark.parametrize(
    "fields",
    [
        {"activation_interval": 14},
        {"renewal_interval": 0},
        {"activation_interval": -120},
        {"renewal_interval": 2**32},
        {"client_count": -1},
        {"client_count": 2**32},
    ],
    ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()),
)
def test_invalid_config_is_rejected(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(EngineConfig(), **fields)


def test_configured_intervals_are_returned() -> None:
    engine = _engine(EngineConfig(activation_interval=15, renewal_interval=43200))
    response = _respond(engine, make_request())
    assert (response.activation_interval, response.renewal_interval) == (15, 43200)


@pytest.mark.parametrize(
    ("unix", "filetime"),
    [(0, 116444736000000000), (-11_644_473_600, 0), (1_795_364_964, NOW)],
)
def test_filetime_conversions(unix: int, filetime: int) -> None:
    assert filetime_from_unix(unix) == filetime
    assert unix_from_filetime(filetime) == unix
