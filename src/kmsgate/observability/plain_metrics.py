"""Prometheus families bumped as plain numbers, for what the host counts per request.

No lock (everything runs on the event loop), read at scrape time. Their exposition is exactly
that of prometheus_client's Counter, Gauge and Histogram, `_created` samples included.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import prometheus_client.metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from kmsgate.observability.tallies import HistogramTally


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
    """An unlabelled gauge whose value `read` returns at scrape time."""

    def __init__(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self._name = name
        self._documentation = documentation
        self._read = read

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self._name, self._documentation)]

    def collect(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self._name, self._documentation, value=float(self._read()))]


class PlainHistogram(Collector):
    """An unlabelled histogram: its tally's per-bucket counts and sum, accumulated at scrape
    time."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self._name = name
        self._documentation = documentation
        bounds = (*buckets, math.inf)
        # The `le` texts prometheus_client's own Histogram writes.
        self._le = tuple(floatToGoString(bound) for bound in bounds)  # type: ignore[no-untyped-call]
        # Bumped by compiled code (tallies.py); the first bucket whose bound is at least
        # the amount, as Histogram.observe picks it.
        self.tally = HistogramTally(bounds)
        self.observe = self.tally.observe
        self._created = time.time()

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self._name, self._documentation)]

    def collect(self) -> Iterable[Metric]:
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
