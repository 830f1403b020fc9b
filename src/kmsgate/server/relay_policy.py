"""The admitted window's request policy applied to the answers a relay observes."""

from __future__ import annotations

from kmsgate.protocol.events import ActivationRefused, ActivationServed, ObserverEvent
from kmsgate.protocol.session import PolicyRefusal, RequestPolicy


def withhold_refused(events: list[ObserverEvent], policy: RequestPolicy, now: int) -> str | None:
    """Apply the window's request policy to the answers in `events` (in place).

    An activation the policy refuses (another machine, or after the window's end) must not
    reach the client: its answer is withheld and it is reported as refused. Returns why,
    or None when everything may pass.
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
        return None
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
