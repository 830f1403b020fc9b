"""What the host counts per request and connection, as plain numbers in compiled code.

The metrics' collectors (metrics.py, plain_metrics.py) stay interpreted: they run at scrape
time only. The per-event counting they expose lives here, compiled with mypyc. Rare events
(faults, protocol closes, refusals of an unknown product) are passed to the callables given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from kmsgate.catalog.families import UNKNOWN_FAMILY
from kmsgate.net import Peer
from kmsgate.protocol.events import (
    ActivationRefused,
    ActivationServed,
    ConnectionClosed,
    Event,
    FaultSent,
)
from kmsgate.protocol.messages import KmsRequest

# The protocol label of each KMS major version; any other is "other". Child counters of the
# activations family are cached by (family, major version) for these versions only:
# attacker-chosen versions must not grow the cache.
PROTOCOLS: Final = {4: "v4", 5: "v5", 6: "v6"}

# (family, request or None, "activated" | "refused") -> the labelled counter's [count, created].
ActivationChild = Callable[[str, KmsRequest | None, str], list[float]]


class HistogramTally:
    """Per-bucket counts and a sum; bucket i counts amounts up to bounds[i] (the last: inf)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.total = 0.0

    def observe(self, amount: float) -> None:
        """Count one amount, in the first bucket whose bound is at least `amount`."""
        # A scan from the front, not a bisection: nearly every request lands in the first
        # bucket. bisect_left's choice all the same, for NaN too (the first bucket).
        index = 0
        for bound in self.bounds:
            if not amount > bound:
                break
            index += 1
        self.counts[index] += 1
        self.total += amount


class EventTally:
    """Activations by family, version and result; connections accepted and open."""

    def __init__(
        self,
        family_by_sku: dict[int, str],
        family_by_kms: dict[int, str],
        activation_child: ActivationChild,
        refused_family: Callable[[KmsRequest | None], str],
        on_fault: Callable[[FaultSent], None],
        on_close: Callable[[ConnectionClosed], None],
        accepted: list[float],
    ) -> None:
        """The families are keyed by the ids' integers (a UUID's hash runs interpreted)."""
        self._family_by_sku = family_by_sku
        self._family_by_kms = family_by_kms
        self._activation_child = activation_child
        self._refused_family = refused_family
        self._on_fault = on_fault
        self._on_close = on_close
        self._served: dict[tuple[str, int], list[float]] = {}
        # (SKU id, KMS id, major version, counter) of the last served request counted.
        self._last_served: tuple[object, object, int, list[float]] = (None, None, -1, [0.0])
        self._refused: dict[tuple[str, int | None], list[float]] = {}
        self._accepted = accepted
        self.open_connections = 0

    def hook(self, peer: Peer, event: Event) -> None:
        """Count one session event; signature matches KmsHost.event_hooks."""
        if isinstance(event, ActivationServed):
            request = event.request
            sku, kms, major = request.sku_id, request.kms_counted_id, request.major_version
            # The message decoder shares one UUID object per id: a run of one product's
            # requests finds its counter by identity, without a lookup.
            last = self._last_served
            if sku is last[0] and kms is last[1] and major == last[2]:
                last[3][0] += 1
                return
            family = (
                self._family_by_sku.get(sku.int)
                or self._family_by_kms.get(kms.int)
                or UNKNOWN_FAMILY
            )
            key = (family, major)
            child = self._served.get(key)
            if child is None:
                child = self._activation_child(family, request, "activated")
                if major in PROTOCOLS:
                    self._served[key] = child
            if major in PROTOCOLS:
                self._last_served = (sku, kms, major, child)
            child[0] += 1
        elif isinstance(event, ActivationRefused):
            refused = event.request
            family = self._refused_family(refused)
            version = None if refused is None else refused.major_version
            found = self._refused.get((family, version))
            if found is None:
                found = self._activation_child(family, refused, "refused")
                if version is None or version in PROTOCOLS:
                    self._refused[family, version] = found
            found[0] += 1
        elif isinstance(event, FaultSent):
            self._on_fault(event)
        elif isinstance(event, ConnectionClosed):
            self._on_close(event)

    def connection_opened(self) -> None:
        """A connection was accepted."""
        self._accepted[0] += 1
        self.open_connections += 1

    def connection_closed(self) -> None:
        """An accepted connection ended (call once per connection_opened)."""
        self.open_connections -= 1
