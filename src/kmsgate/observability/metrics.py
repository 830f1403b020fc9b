"""Prometheus metrics for a KMS host, on a private registry with bounded label sets.

Counting needs no prometheus_client: the registry, and with it the library, is made when
the web listener first asks for it (plain_metrics.py).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

import kmsgate
from kmsgate.catalog import Catalog, default_catalog
from kmsgate.catalog.families import UNKNOWN_FAMILY, family_label
from kmsgate.observability.plain_metrics import (
    PlainCounter,
    PlainGauge,
    PlainHistogram,
    PlainLabelledGauge,
)
from kmsgate.observability.tallies import PROTOCOLS, EventTally
from kmsgate.protocol import rpc
from kmsgate.protocol.events import (
    ConnectionClosed,
    FaultSent,
)
from kmsgate.protocol.messages import KmsRequest

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

log = logging.getLogger("kmsgate.metrics")

# Buckets from 100 µs to 100 ms: a cached v6 answer takes well under a millisecond.
REQUEST_DURATION_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
)
FAULT_REASONS: Final = {
    rpc.NCA_UNK_IF: "unknown_context",
    rpc.NCA_OP_RNG_ERROR: "bad_opnum",
    rpc.NCA_PROTO_ERROR: "protocol_error",
    rpc.RPC_X_BAD_STUB_DATA: "bad_stub_data",
}
# First match wins; the texts are the reasons ServerSession and rpc.decode_pdu produce.
_CLOSE_PATTERNS: Final = (
    ("oversized", re.compile(r"too large")),
    (
        "bad_header",
        re.compile(r"PDU header needs|unsupported RPC version|data representation|shorter than"),
    ),
    ("authenticated", re.compile(r"authenticated PDU")),
    ("unexpected_pdu", re.compile(r"unexpected \w+ PDU|not a bind PDU|unknown PDU type")),
    ("empty_bind", re.compile(r"without presentation contexts")),
    ("bad_fragment", re.compile(r"fragment")),
    ("truncated", re.compile(r"too short|truncated|bytes given|missing")),
)
CLOSE_REASONS: Final = (*(label for label, _ in _CLOSE_PATTERNS), "other")
CONNECTION_OUTCOMES: Final = (
    "accepted",
    "rejected_limit",
    "rejected_source_limit",
    "denied_source",
)

StoreStats = tuple[int, int, int, int]
"""(queue depth, dropped, written, failures) as the activation store reports them."""


# --- product families --------------------------------------------------------------------


def product_family(catalog: Catalog, request: KmsRequest | None) -> str:
    """Bounded family label ("windows", "windows-server", "office-2016", ..., "unknown")."""
    if request is None:
        return UNKNOWN_FAMILY
    return catalog.family(request.sku_id, request.kms_counted_id)


def product_family_label(catalog: Catalog, request: KmsRequest | None) -> str:
    """Human family label of a request, e.g. "Windows Server" or "Office 2019"."""
    return family_label(product_family(catalog, request))


def protocol_label(request: KmsRequest | None) -> str:
    """KMS protocol label: v4, v5, v6; "other" for any other version, "unknown" if undecoded."""
    if request is None:
        return "unknown"
    return PROTOCOLS.get(request.major_version, "other")


def close_reason(reason: str) -> str:
    """Map a free-text protocol-close reason to one of CLOSE_REASONS."""
    for label, pattern in _CLOSE_PATTERNS:
        if pattern.search(reason):
            return label
    return "other"


# --- store collector ---------------------------------------------------------------------


class _StoreCollector:
    """Reads the store's counters at scrape time, so the host never pushes them."""

    def __init__(self) -> None:
        self.source: Callable[[], StoreStats] | None = None

    @staticmethod
    def _families(stats: StoreStats | None) -> list[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        depth = GaugeMetricFamily(
            "kmsgate_store_queue_depth", "Activation records waiting to be written."
        )
        dropped = CounterMetricFamily(
            "kmsgate_store_dropped_records", "Activation records dropped (queue full)."
        )
        written = CounterMetricFamily(
            "kmsgate_store_written_records", "Activation records written to the store."
        )
        failures = CounterMetricFamily(
            "kmsgate_store_failures", "Failed attempts to write to the store."
        )
        if stats is not None:
            depth.add_metric([], float(stats[0]))
            dropped.add_metric([], float(stats[1]))
            written.add_metric([], float(stats[2]))
            failures.add_metric([], float(stats[3]))
        return [depth, dropped, written, failures]

    def describe(self) -> Iterable[Metric]:
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        source = self.source
        if source is None:
            # No store configured: absent series say so more honestly than zeros.
            return []
        try:
            stats = source()
        except Exception:  # a broken store must not fail the whole scrape
            log.exception("reading store statistics for metrics failed")
            return []
        return self._families(stats)


# --- the metrics object ------------------------------------------------------------------


class Metrics:
    """All kmsgate metrics, on a private CollectorRegistry once one is asked for; `hook`
    fits KmsHost.event_hooks."""

    def __init__(
        self, catalog: Catalog | None = None, *, version: str = kmsgate.__version__
    ) -> None:
        self.catalog = catalog = catalog if catalog is not None else default_catalog()
        self._registry: CollectorRegistry | None = None

        self.activations = PlainCounter(
            "kmsgate_activations",
            "KMS requests answered, by product family, KMS protocol and result.",
            ("family", "protocol", "result"),
        )
        self.faults = PlainCounter("kmsgate_faults", "RPC fault PDUs sent, by reason.", ("reason",))
        self.protocol_closes = PlainCounter(
            "kmsgate_protocol_closes",
            "Connections closed for breaking the RPC protocol, by reason.",
            ("reason",),
        )
        self.idle_closes = PlainCounter(
            "kmsgate_idle_closes", "Connections closed by the idle timeout."
        )
        self.connections_open = PlainGauge(
            "kmsgate_connections_open", "Client connections currently open.", self._open_connections
        )
        self.connections = PlainCounter(
            "kmsgate_connections", "Incoming connections, by outcome.", ("outcome",)
        )
        self.request_duration = PlainHistogram(
            "kmsgate_request_duration_seconds",
            "Time to handle received data that produced an activation answer.",
            REQUEST_DURATION_BUCKETS,
        )
        self.build_info = PlainLabelledGauge(
            "kmsgate_build_info", "kmsgate build; the value is always 1.", ("version",)
        )
        self.build_info.set(1, version)
        self.account_backend_up = PlainLabelledGauge(
            "kmsgate_account_backend_up",
            "Whether the gateway's account server answered the last portal login (1) or not (0).",
            ("backend",),
        )
        self._store = _StoreCollector()
        # In the order a scrape lists them.
        self._collectors = (
            self.activations,
            self.faults,
            self.protocol_closes,
            self.idle_closes,
            self.connections_open,
            self.connections,
            self.request_duration,
            self.build_info,
            self.account_backend_up,
            self._store,
        )

        # Label children are looked up once and kept. Fixed label sets are created up front
        # so their series exist (at 0) from the start.
        self._fault_by_status = {
            status: self.faults.child(label) for status, label in FAULT_REASONS.items()
        }
        self._fault_other = self.faults.child("other")
        self._closes = {label: self.protocol_closes.child(label) for label in CLOSE_REASONS}
        self._idle = self.idle_closes.child()
        self._outcomes = {label: self.connections.child(label) for label in CONNECTION_OUTCOMES}
        # The per-event and per-connection counting, compiled (tallies.py): the host calls
        # it directly; the families above read it at scrape time.
        self.tally = EventTally(
            {sku.id.int: sku.family for sku in catalog.skus},
            {kms.id.int: kms.family for kms in catalog.kms_ids},
            self._activation_child,
            functools.partial(product_family, catalog),
            self._count_fault,
            self._count_close,
            self._outcomes["accepted"],
        )
        self.hook = self.tally.hook
        self.connection_opened = self.tally.connection_opened
        self.connection_closed = self.tally.connection_closed
        # How long one data_received that produced an activation took: the tally's own
        # observe, so the connection's call per request runs no wrapper frame.
        self.observe_request: Callable[[float], None] = self.request_duration.observe

    @property
    def registry(self) -> CollectorRegistry:
        """This host's own registry (a private one: tests and several hosts in one process
        must not collide), made with prometheus_client on first use."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry

            registry = CollectorRegistry()
            for collector in self._collectors:
                registry.register(collector)
            self._registry = registry
        return self._registry

    # --- events ---------------------------------------------------------------------------

    def _open_connections(self) -> int:
        return self.tally.open_connections

    def _count_fault(self, event: FaultSent) -> None:
        self._fault_by_status.get(event.status, self._fault_other)[0] += 1

    def _count_close(self, event: ConnectionClosed) -> None:
        self._closes[close_reason(event.reason)][0] += 1

    def _activation_child(
        self, family: str, request: KmsRequest | None, result: str
    ) -> list[float]:
        """The labelled counter of (family, protocol, result), created on first use."""
        return self.activations.child(family, protocol_label(request), result)

    # --- connections ----------------------------------------------------------------------

    def connection_rejected(self, outcome: str) -> None:
        """A connection was turned away: "rejected_limit", "rejected_source_limit" or
        "denied_source"."""
        child = self._outcomes.get(outcome)
        if child is None or outcome == "accepted":
            raise ValueError(f"unknown rejection outcome {outcome!r}")
        child[0] += 1

    def connection_idle(self) -> None:
        """A connection was closed by the idle timeout."""
        self._idle[0] += 1

    def set_account_backend_up(self, backend: str, up: bool) -> None:
        """The account backend (local, ldap, pop3, sql) answered a login, or could not."""
        self.account_backend_up.set(1 if up else 0, backend)

    # --- store and output -----------------------------------------------------------------

    def set_store_source(self, source: Callable[[], StoreStats] | None) -> None:
        """Read (depth, dropped, written, failures) from `source` at each scrape; None: none."""
        self._store.source = source
