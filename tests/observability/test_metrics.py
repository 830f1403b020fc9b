"""Prometheus metrics: counters move with real session events, labels stay bounded."""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import logging
import math
import re
import uuid

import prometheus_client
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

import kmsgate
from kmsgate.catalog import Catalog, default_catalog
from kmsgate.config.settings import ServeSettings
from kmsgate.net import Peer
from kmsgate.observability.metrics import (
    CLOSE_REASONS,
    CONNECTION_OUTCOMES,
    FAULT_REASONS,
    REQUEST_DURATION_BUCKETS,
    Metrics,
    close_reason,
    family_label,
    product_family,
    product_family_label,
    protocol_label,
)
from kmsgate.observability.tallies import HistogramTally
from kmsgate.protocol import rpc
from kmsgate.protocol.client_session import ClientSession
from kmsgate.protocol.engine import filetime_from_unix
from kmsgate.protocol.events import (
    ActivationServed,
    BindCompleted,
    ConnectionClosed,
    Event,
    FaultSent,
)
from kmsgate.protocol.messages import KmsRequest
from kmsgate.server.host import KmsHost
from tests.observability import OFFICE_APP, make_request, refused, served
from tests.support.kms import activate_once

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

FAMILIES = {
    "windows",
    "windows-server",
    "office",
    "office-2010",
    "office-2013",
    "office-2016",
    "office-2019",
    "office-2021",
    "office-2024",
    "unknown",
}
PROTOCOL_LABELS = {"v4", "v5", "v6", "other", "unknown"}

PEER = Peer("10.0.0.1", 50000)


def samples(metrics: Metrics) -> Samples:
    """Every sample of the registry's exposition, parsed by prometheus_client's own parser."""
    out: Samples = {}
    for family in text_string_to_metric_families(
        prometheus_client.generate_latest(metrics.registry).decode()
    ):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics).get((name, frozenset(labels.items())), 0.0)


def label_values(metrics: Metrics, name: str, label: str) -> set[str]:
    return {dict(key)[label] for (sample, key) in samples(metrics) if sample == name}


def loopback_settings() -> ServeSettings:
    return ServeSettings.model_validate({"listen": ["127.0.0.1:0"], "idle_timeout": 5.0})


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return default_catalog()


def sku_request(catalog: Catalog, name: str, version: int = 6) -> KmsRequest:
    sku = catalog.resolve_product(name)
    return make_request(
        version=version, sku_id=sku.id, kms_id=sku.kms_id, app_id=sku.application_id
    )


# --- families ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sku_name", "family", "label"),
    [
        ("Windows Server 2019 Datacenter", "windows-server", "Windows Server"),
        ("Windows 10 Enterprise LTSC 2019/2021", "windows", "Windows"),
        ("Windows Longhorn Standard", "windows-server", "Windows Server"),
        ("Windows 10 Remote Server", "windows", "Windows"),
        ("Office Excel 2010", "office-2010", "Office 2010"),
        ("Office Access 2013", "office-2013", "Office 2013"),
        ("Office Mondo 2016", "office-2016", "Office 2016"),
        ("Office Outlook 2019", "office-2019", "Office 2019"),
        ("Office LTSC Professional Plus 2021", "office-2021", "Office 2021"),
        ("Office LTSC Professional Plus 2024", "office-2024", "Office 2024"),
    ],
)
def test_product_family_follows_the_catalogue(
    catalog: Catalog, sku_name: str, family: str, label: str
) -> None:
    sku = catalog.resolve_product(sku_name)
    request = make_request(sku_id=sku.id, kms_id=sku.kms_id, app_id=sku.application_id)
    assert product_family(catalog, request) == family
    assert product_family_label(catalog, request) == label


def test_unknown_sku_falls_back_to_the_kms_id_then_unknown(catalog: Catalog) -> None:
    kms = next(k for k in catalog.kms_ids if k.name == "Office 2021")
    by_kms = make_request(sku_id=uuid.uuid4(), kms_id=kms.id, app_id=OFFICE_APP)
    assert product_family(catalog, by_kms) == "office-2021"
    nothing = make_request(sku_id=uuid.uuid4(), kms_id=uuid.uuid4())
    assert product_family(catalog, nothing) == "unknown"
    assert product_family(catalog, None) == "unknown"
    assert product_family_label(catalog, None) == "Unknown"


def test_every_catalogue_entry_has_a_bounded_family(catalog: Catalog) -> None:
    found = {
        product_family(catalog, make_request(sku_id=s.id, kms_id=s.kms_id)) for s in catalog.skus
    }
    assert found <= FAMILIES
    assert {"windows", "windows-server", "office-2016", "office-2024"} <= found
    assert {family_label(f) for f in FAMILIES} >= {"Windows", "Windows Server", "Office 2013"}


def test_protocol_and_fault_labels() -> None:
    assert [protocol_label(make_request(version=v)) for v in (4, 5, 6, 7)] == [
        "v4",
        "v5",
        "v6",
        "other",
    ]
    assert protocol_label(None) == "unknown"


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("PDU of 9000 bytes is too large", "oversized"),
        ("fragmented request too large", "oversized"),
        ("unsupported RPC version 4.0", "bad_header"),
        ("unsupported data representation 00000000", "bad_header"),
        ("frag_length 4 shorter than the header", "bad_header"),
        ("unexpected Response PDU from a client", "unexpected_pdu"),
        ("unknown PDU type 99", "unexpected_pdu"),
        ("not a bind PDU", "unexpected_pdu"),
        ("authenticated PDUs are not used by KMS", "authenticated"),
        ("bind without presentation contexts", "empty_bind"),
        ("continuation fragment without a first fragment", "bad_fragment"),
        ("request body too short", "truncated"),
        ("bind truncated inside a context element", "truncated"),
        ("frag_length 80 but 72 bytes given", "truncated"),
        ("the moon is made of cheese", "other"),
    ],
)
def test_close_reasons_map_to_a_fixed_set(reason: str, label: str) -> None:
    assert close_reason(reason) == label


def _session_close_reasons(*payloads: bytes) -> list[str]:
    """Feed each payload to a fresh real ServerSession; the closes it reports."""
    host = KmsHost(loopback_settings())
    reasons = []
    for payload in payloads:
        session = host.new_session(1688)
        for event in session.receive_data(payload, filetime_from_unix(0)):
            if isinstance(event, ConnectionClosed):
                reasons.append(close_reason(event.reason))
    return reasons


def test_closes_of_a_real_session_get_specific_labels() -> None:
    client = ClientSession()
    client.send_bind()
    bind = client.data_to_send()
    bad_version = b"\x04" + bind[1:]
    oversized = bind[:8] + (60000).to_bytes(2, "little") + bind[10:]
    response = rpc.encode_pdu(rpc.Response(2, 0, b"\x00" * 8))
    assert _session_close_reasons(bad_version, oversized, response) == [
        "bad_header",
        "oversized",
        "unexpected_pdu",
    ]


# --- counters ------------------------------------------------------------------------------


def test_served_and_refused_activations_are_counted(catalog: Catalog) -> None:
    metrics = Metrics(catalog)
    for version in (4, 5, 6, 6):
        metrics.hook(PEER, served(make_request(version=version)))
    office = sku_request(catalog, "Office Mondo 2016", 5)
    metrics.hook(PEER, served(office))
    metrics.hook(PEER, refused(make_request(version=4)))
    metrics.hook(PEER, refused(None, hresult=0x8007000D, reason="bad"))

    def count(family: str, protocol: str, result: str) -> float:
        return value(
            metrics,
            "kmsgate_activations_total",
            family=family,
            protocol=protocol,
            result=result,
        )

    assert count("windows-server", "v6", "activated") == 2
    assert count("windows-server", "v5", "activated") == 1
    assert count("windows-server", "v4", "activated") == 1
    assert count("office-2016", "v5", "activated") == 1
    assert count("windows-server", "v4", "refused") == 1
    assert count("unknown", "unknown", "refused") == 1


def test_runs_of_one_product_count_apart_by_version_and_product(catalog: Catalog) -> None:
    """The counter of the last product served is found by the ids' identity: it must still
    change with the version and with either id."""
    server = sku_request(catalog, "Windows Server 2019 Datacenter")
    office = sku_request(catalog, "Office Mondo 2016")
    # An unknown SKU (one object) is counted by its KMS id: that id must count apart.
    unknown = dataclasses.replace(server, sku_id=uuid.UUID(int=7))
    unknown_office = dataclasses.replace(unknown, kms_counted_id=office.kms_counted_id)
    metrics = Metrics(catalog)
    sequence = [server, server, office, server, dataclasses.replace(server, major_version=5)]
    sequence += [server, dataclasses.replace(server, major_version=9), server, office]
    sequence += [unknown, unknown_office, unknown_office]
    # Office's SKU with the server's KMS id object: counted by its SKU, after the server.
    sequence += [server, dataclasses.replace(office, kms_counted_id=server.kms_counted_id)]
    for request in sequence:
        metrics.hook(PEER, served(request))

    def count(family: str, protocol: str) -> float:
        return value(
            metrics,
            "kmsgate_activations_total",
            family=family,
            protocol=protocol,
            result="activated",
        )

    assert count("windows-server", "v6") == 7
    assert count("windows-server", "v5") == 1
    assert count("windows-server", "other") == 1
    assert count("office-2016", "v6") == 5


def test_faults_and_closes_count_by_reason() -> None:
    metrics = Metrics()
    events: list[Event] = [
        FaultSent(2, rpc.NCA_UNK_IF, "context 7 unbound"),
        FaultSent(3, rpc.NCA_UNK_IF, "context 9 unbound"),
        FaultSent(4, rpc.NCA_OP_RNG_ERROR, "opnum 3"),
        FaultSent(5, 0xDEADBEEF, "?"),
        ConnectionClosed("PDU of 70000 bytes is too large"),
        ConnectionClosed("something new"),
    ]
    for event in events:
        metrics.hook(PEER, event)
    assert value(metrics, "kmsgate_faults_total", reason="unknown_context") == 2
    assert value(metrics, "kmsgate_faults_total", reason="bad_opnum") == 1
    assert value(metrics, "kmsgate_faults_total", reason="other") == 1
    assert value(metrics, "kmsgate_protocol_closes_total", reason="oversized") == 1
    assert value(metrics, "kmsgate_protocol_closes_total", reason="other") == 1
    # Fixed label sets are exported from the start, so rate() has a zero to start from.
    assert label_values(metrics, "kmsgate_faults_total", "reason") == {
        *FAULT_REASONS.values(),
        "other",
    }
    assert label_values(metrics, "kmsgate_protocol_closes_total", "reason") == set(CLOSE_REASONS)


def test_connection_metrics() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.connection_opened()
    metrics.connection_closed()
    metrics.connection_rejected("rejected_limit")
    metrics.connection_rejected("denied_source")
    metrics.connection_rejected("denied_source")
    metrics.connection_idle()
    assert value(metrics, "kmsgate_connections_open") == 2
    assert value(metrics, "kmsgate_connections_total", outcome="accepted") == 3
    assert value(metrics, "kmsgate_connections_total", outcome="rejected_limit") == 1
    assert value(metrics, "kmsgate_connections_total", outcome="denied_source") == 2
    assert value(metrics, "kmsgate_idle_closes_total") == 1
    assert label_values(metrics, "kmsgate_connections_total", "outcome") == set(CONNECTION_OUTCOMES)
    for wrong in ("accepted", "because"):
        with pytest.raises(ValueError, match="outcome"):
            metrics.connection_rejected(wrong)


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=30))
def test_the_histogram_tally_picks_bisect_lefts_bucket(amounts: list[float]) -> None:
    bounds = (*REQUEST_DURATION_BUCKETS, math.inf)
    tally, expected = HistogramTally(bounds), [0] * len(bounds)
    for amount in [*amounts, *bounds, *(math.nextafter(b, 0) for b in bounds)]:
        tally.observe(amount)
        expected[bisect.bisect_left(bounds, amount)] += 1
    assert tally.counts == expected


def test_request_duration_histogram() -> None:
    metrics = Metrics()
    for seconds in (0.0002, 0.0004, 0.003, 0.5):
        metrics.observe_request(seconds)
    name = "kmsgate_request_duration_seconds"
    assert value(metrics, f"{name}_count") == 4
    assert value(metrics, f"{name}_sum") == pytest.approx(0.5036)
    assert value(metrics, f"{name}_bucket", le="0.00025") == 1
    assert value(metrics, f"{name}_bucket", le="0.0005") == 2
    assert value(metrics, f"{name}_bucket", le="0.1") == 3
    assert value(metrics, f"{name}_bucket", le="+Inf") == 4
    buckets = {float(le) for le in label_values(metrics, f"{name}_bucket", "le")}
    assert min(buckets) <= 0.0001 and max(buckets - {float("inf")}) == 0.1


def _plain_lines(registry: prometheus_client.CollectorRegistry) -> list[str]:
    """The exposition lines of the families counted as plain numbers (all but the store's,
    read at scrape time), `_created` times masked."""
    out = []
    for line in prometheus_client.generate_latest(registry).decode().splitlines():
        name = line.split()[2] if line.startswith("#") else re.split(r"[{ ]", line)[0]
        if name.startswith("kmsgate_store_"):
            continue
        if not line.startswith("#") and name.endswith("_created"):
            line = line.rsplit(" ", 1)[0] + " <time>"
        out.append(line)
    return out


class _PrometheusReference:
    """Every family Metrics counts, as prometheus_client's own Counter, Gauge and Histogram."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        reg = self.registry
        self.activations = prometheus_client.Counter(
            "kmsgate_activations",
            "KMS requests answered, by product family, KMS protocol and result.",
            ["family", "protocol", "result"],
            registry=reg,
        )
        self.faults = prometheus_client.Counter(
            "kmsgate_faults", "RPC fault PDUs sent, by reason.", ["reason"], registry=reg
        )
        for reason in (*FAULT_REASONS.values(), "other"):
            self.faults.labels(reason)
        self.closes = prometheus_client.Counter(
            "kmsgate_protocol_closes",
            "Connections closed for breaking the RPC protocol, by reason.",
            ["reason"],
            registry=reg,
        )
        for reason in CLOSE_REASONS:
            self.closes.labels(reason)
        self.idle = prometheus_client.Counter(
            "kmsgate_idle_closes", "Connections closed by the idle timeout.", registry=reg
        )
        self.open = prometheus_client.Gauge(
            "kmsgate_connections_open", "Client connections currently open.", registry=reg
        )
        self.connections = prometheus_client.Counter(
            "kmsgate_connections", "Incoming connections, by outcome.", ["outcome"], registry=reg
        )
        for outcome in CONNECTION_OUTCOMES:
            self.connections.labels(outcome)
        self.duration = prometheus_client.Histogram(
            "kmsgate_request_duration_seconds",
            "Time to handle received data that produced an activation answer.",
            buckets=REQUEST_DURATION_BUCKETS,
            registry=reg,
        )
        self.build_info = prometheus_client.Gauge(
            "kmsgate_build_info", "kmsgate build; the value is always 1.", ["version"], registry=reg
        )
        self.backend_up = prometheus_client.Gauge(
            "kmsgate_account_backend_up",
            "Whether the gateway's account server answered the last portal login (1) or not (0).",
            ["backend"],
            registry=reg,
        )


@pytest.mark.parametrize("created", [True, False])
def test_plain_counts_expose_exactly_what_prometheus_client_would(
    catalog: Catalog, created: bool
) -> None:
    """Names, HELP, TYPE, label order, sample order and float values match, `_created` too."""
    if not created:
        prometheus_client.disable_created_metrics()
    try:
        metrics, reference = Metrics(catalog), _PrometheusReference()
        office = sku_request(catalog, "Office Mondo 2016", 5)
        events = [
            served(make_request(version=6)),
            served(office),
            refused(make_request(version=4)),
            served(make_request(version=7)),  # "other": never cached
            served(make_request(version=7)),
            refused(None, hresult=0x8007000D, reason="bad"),
            served(make_request(version=6)),
        ]
        for event in events:
            metrics.hook(PEER, event)
            result = "activated" if isinstance(event, ActivationServed) else "refused"
            reference.activations.labels(
                product_family(catalog, event.request), protocol_label(event.request), result
            ).inc()
        for _ in range(3):
            metrics.connection_opened()
            reference.connections.labels("accepted").inc()
            reference.open.inc()
        metrics.connection_closed()
        reference.open.dec()
        for outcome in ("denied_source", "rejected_limit", "denied_source"):
            metrics.connection_rejected(outcome)
            reference.connections.labels(outcome).inc()
        for seconds in (0.0, 1e-9, 0.0001, 0.00010000001, 0.0003, 0.1, 0.1000001, 7.5, 0.0025):
            metrics.observe_request(seconds)
            reference.duration.observe(seconds)
        for fault in (FaultSent(2, rpc.NCA_UNK_IF, "unbound"), FaultSent(3, 0xDEADBEEF, "?")):
            metrics.hook(PEER, fault)
        reference.faults.labels("unknown_context").inc()
        reference.faults.labels("other").inc()
        metrics.hook(PEER, ConnectionClosed("PDU of 70000 bytes is too large"))
        reference.closes.labels("oversized").inc()
        for _ in range(2):
            metrics.connection_idle()
            reference.idle.inc()
        reference.build_info.labels(kmsgate.__version__).set(1)
        metrics.set_account_backend_up("ldap", True)
        metrics.set_account_backend_up("ldap", False)
        metrics.set_account_backend_up("local", True)
        reference.backend_up.labels("ldap").set(0)
        reference.backend_up.labels("local").set(1)
        ours, theirs = _plain_lines(metrics.registry), _plain_lines(reference.registry)
        assert ours == theirs
        assert any("_created" in line for line in ours) is created
        assert 'kmsgate_request_duration_seconds_bucket{le="0.0001"} 3.0' in ours
        assert "kmsgate_idle_closes_total 2.0" in ours
        assert 'kmsgate_account_backend_up{backend="ldap"} 0.0' in ours
        assert 'kmsgate_faults_total{reason="bad_opnum"} 0.0' in ours
    finally:
        prometheus_client.enable_created_metrics()


def test_store_metrics_are_read_at_scrape_time(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    assert not any(name.startswith("kmsgate_store") for name, _ in samples(metrics))
    state = [3, 0, 10, 0]
    metrics.set_store_source(lambda: (state[0], state[1], state[2], state[3]))
    assert value(metrics, "kmsgate_store_queue_depth") == 3
    assert value(metrics, "kmsgate_store_written_records_total") == 10
    state[:] = [0, 2, 15, 1]
    assert value(metrics, "kmsgate_store_queue_depth") == 0
    assert value(metrics, "kmsgate_store_dropped_records_total") == 2
    assert value(metrics, "kmsgate_store_written_records_total") == 15
    assert value(metrics, "kmsgate_store_failures_total") == 1

    def broken() -> tuple[int, int, int, int]:
        raise RuntimeError("store gone")

    metrics.set_store_source(broken)
    with caplog.at_level(logging.ERROR, logger="kmsgate.metrics"):
        scraped = samples(metrics)  # the scrape itself must still succeed
    assert ("kmsgate_build_info", frozenset({("version", "0.1.0")})) in scraped
    assert not any(name.startswith("kmsgate_store") for name, _ in scraped)
    assert "store statistics" in caplog.text


def test_build_info_and_private_registries() -> None:
    first, second = Metrics(version="1.2.3"), Metrics()
    first.hook(PEER, served())
    assert value(first, "kmsgate_build_info", version="1.2.3") == 1
    assert value(second, "kmsgate_activations_total", family="windows-server", protocol="v6") == 0
    default = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "kmsgate_" not in default


def test_bind_events_are_ignored() -> None:
    metrics = Metrics()
    before = samples(metrics)
    metrics.hook(PEER, BindCompleted(1, False, (), True, None))
    assert samples(metrics).keys() == before.keys()


# --- bounded cardinality -----------------------------------------------------------------

_guids = st.uuids(version=4)


@settings(max_examples=60, deadline=None)
@given(
    events=st.lists(
        st.one_of(
            st.builds(
                lambda sku, kms, version: served(
                    make_request(version=version, sku_id=sku, kms_id=kms)
                ),
                _guids,
                _guids,
                st.integers(0, 0xFFFF),
            ),
            st.builds(
                lambda sku, version: refused(make_request(version=version, sku_id=sku)),
                _guids,
                st.integers(0, 0xFFFF),
            ),
            st.builds(lambda: refused(None)),
            st.builds(
                lambda status, reason: FaultSent(1, status, reason),
                st.integers(0, 0xFFFFFFFF),
                st.text(max_size=40),
            ),
            st.builds(ConnectionClosed, st.text(max_size=80)),
        ),
        max_size=40,
    )
)
def test_random_events_keep_label_sets_bounded(events: list[Event]) -> None:
    metrics = Metrics()
    for event in events:
        metrics.hook(Peer("198.51.100.7", 1), event)
    assert label_values(metrics, "kmsgate_activations_total", "family") <= FAMILIES
    assert label_values(metrics, "kmsgate_activations_total", "protocol") <= PROTOCOL_LABELS
    assert label_values(metrics, "kmsgate_activations_total", "result") <= {
        "activated",
        "refused",
    }
    assert label_values(metrics, "kmsgate_faults_total", "reason") == {
        *FAULT_REASONS.values(),
        "other",
    }
    assert label_values(metrics, "kmsgate_protocol_closes_total", "reason") == set(CLOSE_REASONS)
    # The hot-path caches are keyed by bounded values, whatever versions clients claim.
    assert len(metrics.tally._served) <= len(FAMILIES) * 3
    assert len(metrics.tally._refused) <= len(FAMILIES) * 4


@given(st.text(max_size=200))
def test_any_close_reason_maps_into_the_set(reason: str) -> None:
    assert close_reason(reason) in CLOSE_REASONS


# --- with the real host ------------------------------------------------------------------


async def test_hook_counts_activations_of_a_running_host() -> None:
    metrics = Metrics()
    async with KmsHost(loopback_settings()) as host:
        host.event_hooks.append(metrics.hook)
        await activate_once(host.port, 5)
        await activate_once(host.port, 6)
        await asyncio.sleep(0.05)
    for protocol in ("v5", "v6"):
        assert (
            value(
                metrics,
                "kmsgate_activations_total",
                family="windows-server",
                protocol=protocol,
                result="activated",
            )
            == 1
        )
