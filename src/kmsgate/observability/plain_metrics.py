"""Prometheus families bumped as plain numbers, for what the host counts per request.

No lock (everything runs on the event loop), read at scrape time. Their exposition is exactly
that of prometheus_client's Counter, Gauge and Histogram, `_created` samples included.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterable

import prometheus_client.metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


def created_series() -> bool:
    """Whether prometheus_client exports `_created` samples (its env var or switch)."""
    return bool(getattr(prometheus_client.metrics, "_use_created", True))


class PlainCounter(Collector):
    """A labelled counter whose children are `[count, created]` lists: `child[0] += 1`."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = labelnames
        self._children: dict[tuple[str, ...], list[float]] = {}

    def child(self, *labels: str) -> list[float]:
        """The child of these label values, created (at 0) on first use."""
        found = self._children.get(labels)
        if found is None:
            found = self._children[labels] = [0, time.time()]
        return found

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        created = created_series()
        for labels, (count, when) in list(self._children.items()):
            family.add_metric(labels, float(count), created=when if created else None)
        return [family]


class PlainGauge(Collector):
    """An unlabelled gauge: `value` is read at scrape time."""

    def __init__(self, name: str, documentation: str) -> None:
        self._name = name
        self._documentation = documentation
        self.value = 0

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self._name, self._documentation)]

    def collect(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self._name, self._documentation, value=float(self.value))]


class PlainHistogram(Collector):
    """An unlabelled histogram: per-bucket counts and a sum, accumulated at scrape time."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = (*buckets, math.inf)
        # The `le` texts prometheus_client's own Histogram writes.
        self._le = tuple(floatToGoString(bound) for bound in self._bounds)  # type: ignore[no-untyped-call]
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._created = time.time()

    def observe(self, amount: float) -> None:
        # The first bucket whose bound is at least `amount`, as Histogram.observe picks it.
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self._name, self._documentation)]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation)
        buckets = []
        total = 0
        for le, count in zip(self._le, list(self._counts), strict=True):
            total += count
            buckets.append((le, float(total)))
        family.add_metric([], buckets, self._sum)
        if created_series():
            family.add_sample(f"{self._name}_created", {}, self._created)
        return [family]
