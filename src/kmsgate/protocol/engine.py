"""KmsEngine: the pure policy that turns a decoded request into a response or a refusal."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from kmsgate.protocol.counting import SeenClients
from kmsgate.protocol.errors import KmsMessageError
from kmsgate.protocol.hresult import HResult
from kmsgate.protocol.messages import DecodedRequest, KmsRequest, KmsResponse

FILETIME_TICKS_PER_SECOND: Final = 10_000_000
MAX_N_COUNT: Final = 1000
# A genuine client refuses a host whose clock differs from its own by more than 4 hours.
DEFAULT_MAX_CLOCK_SKEW: Final = 4 * 3600

EpidProvider = Callable[[KmsRequest], str]
ProductPolicy = Callable[[KmsRequest], "HResult | None"]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Host behaviour that does not depend on the request."""

    activation_interval: int = 120
    renewal_interval: int = 10080
    client_count: int | None = None
    max_clock_skew: int | None = None
    verify_v4_mac: bool = True

    def __post_init__(self) -> None:
        for name in ("activation_interval", "renewal_interval"):
            value = getattr(self, name)
            if not 15 <= value <= 0xFFFFFFFF // 60:
                raise ValueError(f"{name} must be at least 15 minutes, got {value}")
        if self.client_count is not None and not 0 <= self.client_count <= 0xFFFFFFFF:
            raise ValueError(f"client_count out of range: {self.client_count}")


def filetime_from_unix(seconds: float) -> int:
    """Convert Unix seconds to a FILETIME tick count."""
    return int((seconds + 11_644_473_600) * FILETIME_TICKS_PER_SECOND)


def unix_from_filetime(filetime: int) -> float:
    """Convert a FILETIME tick count to Unix seconds."""
    # One rounding, as Python's int / int: mypyc's compiled `/` turns a FILETIME (beyond
    # 2**53) into a float before dividing, which rounds twice.
    seconds: float = operator.truediv(filetime, FILETIME_TICKS_PER_SECOND)
    return seconds - 11_644_473_600


class KmsEngine:
    """Decides every field of a response; refusals raise KmsMessageError with an HRESULT."""

    def __init__(
        self,
        config: EngineConfig,
        epid_for: EpidProvider,
        product_policy: ProductPolicy | None = None,
        seen_clients: SeenClients | None = None,
    ) -> None:
        self.config = config
        self._epid_for = epid_for
        self._product_policy = product_policy
        self.seen_clients = seen_clients

    def set_product_policy(self, policy: ProductPolicy | None) -> None:
        """Replace the product policy (configuration reload)."""
        self._product_policy = policy

    def client_count(self, request: KmsRequest, now: int) -> int:
        """Count reported to the client: the machines seen lately (counting this one), when
        counting; else the configured count; else twice its N-count, as a well-used host."""
        if self.seen_clients is not None:
            return self.seen_clients.observe(request, now)
        if self.config.client_count is not None:
            return self.config.client_count
        return 2 * request.required_client_count if request.required_client_count else 1

    def respond(self, decoded: DecodedRequest, now: int) -> KmsResponse:
        """Answer a decoded request; `now` is the host clock as FILETIME."""
        request = decoded.request
        if not decoded.mac_valid and self.config.verify_v4_mac:
            raise KmsMessageError("v4 request MAC does not match its content")
        if request.required_client_count > MAX_N_COUNT:
            raise KmsMessageError(f"N-count {request.required_client_count} exceeds {MAX_N_COUNT}")
        skew = self.config.max_clock_skew
        if skew is not None and abs(request.request_time - now) > skew * FILETIME_TICKS_PER_SECOND:
            raise KmsMessageError(
                "client clock differs from the host by too much", HResult.TIME_SKEW
            )
        if self._product_policy is not None:
            refusal = self._product_policy(request)
            if refusal is not None:
                raise KmsMessageError("product refused by policy", refusal)
        return KmsResponse(
            request.major_version,
            self._epid_for(request),
            request.client_machine_id,
            request.request_time,
            self.client_count(request, now),
            self.config.activation_interval,
            self.config.renewal_interval,
            request.minor_version,
        )
