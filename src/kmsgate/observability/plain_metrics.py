"""Prometheus families bumped as plain numbers, for everything the host counts.

No lock (everything runs on the event loop), read at scrape time. Their exposition is exactly
that of prometheus_client's Counter, Gauge and Histogram, `_created` samples included.
prometheus_client (4 MiB with the HTTP modules its package imports) is loaded by the first
scrape only: a node without the web listener counts without it. The classes are collectors
by their collect() and describe() methods, which is all a CollectorRegistry asks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from kmsgate.observability.tallies import HistogramTally

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric


def created_series() -> bool:
    """Whether prometheus_client exports `_created` samples (its env var or switch)."""
    import prometheus_client.metrics

    return bool(getattr(prometheus_client.metrics, "_use_created", True))


class PlainCounter:
    """A labelled counter whose children are `[count, created]` lists: `child[0] += 1`.

    Without label names it has its one child from the start, as prometheus_client's has.
    """

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = ()) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = labelnames
        self._children: dict[tuple[str, ...], list[float]] = {}
        if not labelnames:
            self.child()

    def child(self, *labels: str) -> list[float]:
        """The child of these label values, created (at 0) on first use."""
        found = self._children.get(labels)
        if found is None:
            found = self._children[labels] = [0, time.time()]
        return found

    def describe(self) -> Iterable[Metric]:
        from prometheus_client.core import CounterMetricFamily

        return [CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        created = created_series()
        for labels, (count, when) in list(self._children.items()):
            family.add_metric(labels, float(count), created=when if created else None)
        return [family]


class PlainGauge:
    """An unlabelled gauge whose value `read` returns at scrape time."""

    def __init__(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self._name = name
        self._documentation = documentation
        self._read = read

    def describe(self) -> Iterable[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        return [GaugeMetricFamily(self._name, self._documentation)]

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        return [GaugeMetricFamily(self._name, self._documentation, value=float(self._read()))]


class PlainLabelledGauge:
    """A gauge with label names, each child set to a value: `set(value, *labels)`."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = labelnames
        self._values: dict[tuple[str, ...], float] = {}

    def set(self, value: float, *labels: str) -> None:
        """The child of these label values now reads `value`."""
        self._values[labels] = value

    def describe(self) -> Iterable[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        return [GaugeMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for labels, value in list(self._values.items()):
            family.add_metric(labels, float(value))
        return [family]


class PlainHistogram:
    """An unlabelled histogram: its tally's per-bucket counts and sum, accumulated at scrape
    time."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = (*buckets, math.inf)
        self._le: tuple[str, ...] = ()  # the `le` texts, made at the first scrape
        # Bumped by compiled code (tallies.py); the first bucket whose bound is at least
        # the amount, as Histogram.observe picks it.
        self.tally = HistogramTally(self._bounds)
        self.observe = self.tally.observe
        self._created = time.time()

    def describe(self) -> Iterable[Metric]:
        from prometheus_client.core import HistogramMetricFamily

        return [HistogramMetricFamily(self._name, self._documentation)]

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        if not self._le:
            # The texts prometheus_client's own Histogram writes.
            self._le = tuple(floatToGoString(bound) for bound in self._bounds)  # type: ignore[no-untyped-call]
        family = HistogramMetricFamily(self._name, self._documentation)
        buckets = []
        total = 0
        for le, count in zip(self._le, list(self.tally.counts), strict=True):
            total += count
            buckets.append((le, float(total)))
        family.add_metric([], buckets, self.tally.total)
        if created_series():
            family.add_sample(f"{self._name}_created", {}, self._created)
        return [family]
