"""What `kmsgate client` prints for people: each request and answer, and load figures."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from kmsgate.catalog import Catalog, Sku
from kmsgate.cli.client_records import utc_text
from kmsgate.client.exchange import ActivationResult, RequestTemplate
from kmsgate.client.loadgen import LoadResult
from kmsgate.dns.discovery import KmsHostCandidate
from kmsgate.net import Endpoint
from kmsgate.protocol.licensing import license_status_name
from kmsgate.protocol.verification import Check


def _mark(check: Check) -> Text:
    if check.passed:
        return Text(f"✓ {check.name}", style="green")
    if not check.fatal:
        return Text(f"! {check.name} ({check.detail})", style="yellow")
    return Text(f"✗ {check.name} ({check.detail})", style="bold red")


def _row(console: Console, label: str, value: str | Text) -> None:
    console.print(Text.assemble((f"  {label:<10} ", "bold"), value))


def print_result(console: Console, index: int, result: ActivationResult) -> None:
    """One request and its answer, field by field, with every check marked."""
    request, response = result.request, result.response
    console.print(
        Text(
            f"Request {index}: v{request.major_version}.{request.minor_version} "
            f"{result.syntax.value} call {result.call_id} → "
            f"{Endpoint(result.host, result.port)}",
            style="bold",
        )
    )
    _row(console, "machine", request.machine_name)
    _row(console, "CMID", str(request.client_machine_id))
    _row(
        console,
        "sent",
        f"N-count {request.required_client_count}, license status {request.license_status} "
        f"({license_status_name(request.license_status)}), grace {request.grace_time} min, "
        f"time {utc_text(request.request_time)}",
    )
    _row(console, "ePID", response.epid)
    if result.hwid is not None:
        _row(console, "HWID", result.hwid.hex().upper())
    _row(
        console,
        "count",
        f"{response.current_client_count} (N-count {request.required_client_count})",
    )
    _row(
        console,
        "intervals",
        f"activation {response.activation_interval} min, renewal {response.renewal_interval} min",
    )
    _row(console, "checks", Text("  ").join(_mark(c) for c in result.checks))
    timing = f"{result.latency * 1000:.2f} ms"
    if result.connect_latency is not None:
        timing += f" (+ {result.connect_latency * 1000:.2f} ms connect and bind)"
    _row(console, "latency", timing)
    for warning in result.warnings:
        _row(console, "warning", Text(warning, style="yellow"))


def print_header(
    console: Console,
    catalog: Catalog,
    sku: Sku,
    template: RequestTemplate,
    discovered_via: str | None,
    candidates: list[KmsHostCandidate],
) -> None:
    """The product asked for and, after DNS discovery, the SRV candidates found."""
    kms = catalog.kms_id(sku.kms_id)
    console.print(
        Text.assemble(
            ("Product ", "bold"),
            f"{sku.name} ({sku.id}), KMS id {kms.name if kms else sku.kms_id}, "
            f"N-count {template.required_client_count}, protocol v{template.major_version}",
        )
    )
    if discovered_via:
        found = ", ".join(
            f"{Endpoint(c.host, c.port)} (priority {c.priority}, weight {c.weight})"
            for c in candidates
        )
        console.print(Text.assemble(("Discovered ", "bold"), f"{discovered_via}: {found}"))


def print_load(console: Console, result: LoadResult, where: str) -> None:
    """The load generator's throughput, latency percentiles and errors."""
    summary = result.summary()
    lat = summary["latency_ms"]
    table = Table(title=f"Load against {where}", title_justify="left")
    for column in (
        "activations",
        "failed",
        "activations/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
    ):
        table.add_column(column, justify="right")
    table.add_row(
        f"{result.succeeded}/{result.attempted}",
        str(result.failed),
        f"{result.activations_per_second:.1f}",
        f"{lat['p50']:.2f}",
        f"{lat['p90']:.2f}",
        f"{lat['p99']:.2f}",
        f"{lat['max']:.2f}",
    )
    console.print(table)
    mode = (
        "a fresh connection per activation"
        if result.settings.requests_per_connection == 1
        else f"up to {result.settings.requests_per_connection} requests per connection"
    )
    console.print(
        f"concurrency {result.settings.concurrency}, {mode}, {result.connections} connections, "
        f"{result.elapsed:.2f} s"
        + (" (stopped by the time limit)" if result.stopped_by_time else "")
    )
    for key, count in sorted(result.errors.items()):
        console.print(Text(f"  {count} × {key}", style="red"))
