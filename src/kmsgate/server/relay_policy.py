"""The admitted window's request policy applied to the answers a relay observes."""

from __future__ import annotations

from kmsgate.protocol.events import (
    ActivationRefused,
    ActivationServed,
    ObserverEvent,
    ObserverNote,
)
from kmsgate.protocol.hresult import HResult
from kmsgate.protocol.session import PolicyRefusal, RequestPolicy


def unaccounted(events: list[ObserverEvent]) -> ObserverNote | None:
    """The first note saying these bytes carry what the observer cannot tie to a request."""
    return next((e for e in events if isinstance(e, ObserverNote) and e.unaccounted), None)


def withhold_refused(events: list[ObserverEvent], policy: RequestPolicy, now: int) -> str | None:
    """Apply the window's request policy to the answers in `events` (in place).

    An activation the policy refuses (another machine, or after the window's end) must not
    reach the client: its answer is withheld and it is reported as refused. Nor may an answer
    the observer cannot attribute (a window is spent by the served activation it sees; one it
    cannot see would be free). Returns why, or None when everything may pass.
    """
    withheld: PolicyRefusal | None = None
    for event in events:
        if not isinstance(event, ActivationServed | ActivationRefused):
            continue
        if event.request is not None:
            refusal = policy(event.request, now)
            if refusal is not None and isinstance(event, ActivationServed):
                withheld = withheld or refusal
    if withheld is None:
        blind = unaccounted(events)
        if blind is None:
            return None
        withheld = PolicyRefusal(
            HResult.PRODUCT_NOT_ALLOWED, f"the relay cannot account for it: {blind.reason}"
        )
    # The whole read is withheld, so no answer in it reached the client.
    for index, event in enumerate(events):
        if isinstance(event, ActivationServed):
            events[index] = ActivationRefused(
                event.call_id,
                event.syntax,
                event.request,
                withheld.hresult,
                f"upstream answer withheld: {withheld.reason}",
            )
    return withheld.reason
