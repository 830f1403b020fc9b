"""Micro-benchmark of the per-event metrics hook and activation logging (run by hand).

Usage: .venv/bin/python bench/bench_metrics.py [--loops N]
"""

from __future__ import annotations

import argparse
import io
import logging
import time
import uuid
from collections.abc import Callable

from prometheus_client import Counter

from kmsgate.catalog import default_catalog
from kmsgate.net import Peer
from kmsgate.observability.activation_log import log_activation
from kmsgate.observability.logs import JsonFormatter, SecretMaskingFilter
from kmsgate.observability.metrics import Metrics
from kmsgate.protocol import rpc
from kmsgate.protocol.events import ActivationRefused, ActivationServed, FaultSent
from kmsgate.protocol.messages import KmsRequest, KmsResponse
from kmsgate.protocol.ndr import TransferSyntax

PEER = Peer("10.1.2.3", 49152)


def per_call_us(fn: Callable[[], object], loops: int, repeats: int = 5) -> float:
    """Best of `repeats` runs, in microseconds per call (best run is least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / loops * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loops", type=int, default=200_000)
    loops = parser.parse_args().loops
    catalog = default_catalog()
    sku = catalog.resolve_product("Windows Server 2019 Datacenter")
    request = KmsRequest(
        major_version=6,
        application_id=sku.application_id,
        sku_id=sku.id,
        kms_counted_id=sku.kms_id,
        client_machine_id=uuid.uuid4(),
        required_client_count=5,
        request_time=133_486_382_450_000_000,
        machine_name="DESKTOP-42.corp.example",
    )
    response = KmsResponse(
        6, "06401-00206-271-298329-03-1033-9600.0000-0452017", uuid.uuid4(), 0, 10, 120, 10080
    )
    served = ActivationServed(2, TransferSyntax.NDR32, request, response)
    refused = ActivationRefused(2, TransferSyntax.NDR32, request, 0xC004F042, "not allowed")
    fault = FaultSent(2, rpc.NCA_UNK_IF, "context 3 unbound")
    metrics = Metrics(catalog)
    hook = metrics.hook
    # prometheus_client's own labelled counter, as the host used it before plain counts.
    uncached = Counter(
        "baseline_activations", "baseline", ["family", "protocol", "result"], registry=None
    )

    results = {
        "hook(ActivationServed)": per_call_us(lambda: hook(PEER, served), loops),
        "hook(ActivationRefused)": per_call_us(lambda: hook(PEER, refused), loops),
        "hook(FaultSent)": per_call_us(lambda: hook(PEER, fault), loops),
        "observe_request": per_call_us(lambda: metrics.observe_request(0.0003), loops),
        "baseline .labels(...).inc()": per_call_us(
            lambda: uncached.labels("windows-server", "v6", "activated").inc(), loops
        ),
    }

    root = logging.getLogger()
    root.handlers[:] = []
    root.setLevel(logging.WARNING)
    results["log_activation (INFO disabled)"] = per_call_us(
        lambda: log_activation(PEER, served, catalog), loops
    )
    handler = logging.StreamHandler(io.StringIO())
    handler.addFilter(SecretMaskingFilter())
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    results["log_activation (json, in memory)"] = per_call_us(
        lambda: log_activation(PEER, served, catalog), loops // 10
    )
    for name, us in results.items():
        print(f"{name:36} {us:6.2f} µs")


if __name__ == "__main__":
    main()
