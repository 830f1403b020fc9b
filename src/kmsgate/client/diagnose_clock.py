"""The clock step: whether the host took our time stamp, and probing its clock when not."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kmsgate.client.diagnose_report import Finding, duration_text, error_finding, utc_text
from kmsgate.protocol.hresult import HResult, explain

__all__ = [
    "COARSE_SHIFTS",
    "ClockEstimate",
    "clock_ok_finding",
    "clock_skew_finding",
    "probe_clock",
]

Accepts = Callable[[float], Awaitable[bool | None]]


@dataclass(frozen=True, slots=True)
class ClockEstimate:
    """Where the host's clock lies relative to ours, from which time stamps it accepted."""

    near_edge: float  # the smallest shift of our time stamp the host accepts (seconds)
    far_edge: float | None  # the other end of the accepted range, when found
    probes: int

    @property
    def host_offset(self) -> float:
        """Host clock minus ours (seconds): the middle of the accepted range."""
        if self.far_edge is None:
            return self.near_edge
        return (self.near_edge + self.far_edge) / 2

    @property
    def tolerance(self) -> float | None:
        """The skew the host allows (seconds), when both edges were found."""
        return None if self.far_edge is None else abs(self.far_edge - self.near_edge) / 2


#: Shifts tried to find one time stamp the host accepts: hours (time zones), then days.
COARSE_SHIFTS = tuple(
    sign * hours * 3600
    for hours in (*range(4, 25, 4), 48, 72, 96, 120, 144, 168, 720, 8760)
    for sign in (1, -1)
)


async def probe_clock(
    accepts: Callable[[float], Awaitable[bool | None]],
    *,
    precision: float = 60.0,
    max_probes: int = 64,
) -> ClockEstimate | None:
    """Find the range of time-stamp shifts the host accepts; None if none was found.

    `accepts(shift)` sends a request stamped `now + shift`: True accepted, False refused for
    its time stamp, None when the probing must stop (connection lost, other failure).
    """
    probes = 0

    async def ask(shift: float) -> bool | None:
        nonlocal probes
        probes += 1
        return await accepts(shift)

    hit: float | None = None
    for shift in COARSE_SHIFTS:
        if probes >= max_probes:
            return None
        answer = await ask(shift)
        if answer is None:
            return None
        if answer:
            hit = shift
            break
    if hit is None:
        return None
    sign = 1.0 if hit > 0 else -1.0

    async def edge(accepted: float, refused: float) -> float | None:
        # Bisect between an accepted and a refused shift: the boundary, to `precision`.
        while abs(accepted - refused) > precision:
            if probes >= max_probes:
                return None
            middle = (accepted + refused) / 2
            answer = await ask(middle)
            if answer is None:
                return None
            if answer:
                accepted = middle
            else:
                refused = middle
        return accepted

    near = await edge(hit, 0.0)
    if near is None:
        return ClockEstimate(hit, None, probes)
    step, accepted, far = 3600.0, hit, None
    while step <= 16 * 24 * 3600 and probes < max_probes:
        answer = await ask(accepted + sign * step)
        if answer is None:
            break
        if answer:
            accepted += sign * step
            step *= 2
            continue
        far = await edge(accepted, accepted + sign * step)
        break
    return ClockEstimate(near, far, probes)


def clock_ok_finding(sent: float, shift: float) -> Finding:
    """The host accepted the time stamp `sent` (this machine's clock shifted by `shift`)."""
    details = {"request_time_utc": utc_text(sent), "shift_seconds": shift}
    text = (
        "A KMS answer echoes the client's time stamp instead of carrying the host's clock, "
        "so the host's clock cannot be read; the host accepted this one. A genuine host "
        "refuses time stamps more than 4 hours off its clock (0xC004F06C), kmsgate only "
        "with max_clock_skew."
    )
    title = f"the host accepted the time stamp {utc_text(sent)}"
    if shift:
        title += f" (this machine's clock shifted by {shift:+g} s)"
    return Finding("clock", "ok", title, text, details=details)


async def clock_skew_finding(sent: float, shift: float, accepts: Accepts, probe: bool) -> Finding:
    """The host refused the time stamp `sent`; with `probe`, find its clock through `accepts`.

    `accepts(extra)` asks with the time stamp shifted `extra` seconds more (see probe_clock).
    """
    info = explain(HResult.TIME_SKEW)
    assert info is not None
    details: dict[str, Any] = {"request_time_utc": utc_text(sent), "shift_seconds": shift}
    title = f"the host refused the time stamp {utc_text(sent)} (0xC004F06C)"
    if not probe:
        return error_finding(
            "clock", title, info.cause, info.fix, hresult=HResult.TIME_SKEW, details=details
        )
    estimate = await probe_clock(accepts)
    if estimate is None:
        details["probes"] = "no accepted time stamp found within a year either way"
        return error_finding(
            "clock",
            title,
            info.cause + " Requests stamped up to a year earlier or later were refused "
            "too, so the host's window is narrow or it refuses for another reason.",
            info.fix,
            hresult=HResult.TIME_SKEW,
            details=details,
        )
    offset = estimate.host_offset
    direction = "ahead of" if offset > 0 else "behind"
    details.update(
        host_offset_seconds=round(offset),
        tolerance_seconds=None if estimate.tolerance is None else round(estimate.tolerance),
        probes=estimate.probes,
    )
    measured = f"the host's clock is about {duration_text(offset)} {direction} this machine's"
    if estimate.tolerance is not None:
        measured += f", and it allows {duration_text(estimate.tolerance)} of difference"
    return error_finding(
        "clock",
        title,
        f"{info.cause} Probing with shifted time stamps ({estimate.probes} requests): {measured}.",
        info.fix,
        hresult=HResult.TIME_SKEW,
        details=details,
    )
