"""`kmsgate diagnose`: explain, step by step, why a client cannot activate."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kmsgate.catalog import default_catalog
from kmsgate.cli.client import (
    DNS_SERVER_ENV,
    _resolve_sku,
    parse_target,
)
from kmsgate.client.diagnose import diagnose, diagnose_cmid, diagnose_template
from kmsgate.client.diagnose_dns import DnsResolver
from kmsgate.client.diagnose_report import EXIT_CODES, Diagnosis, Finding
from kmsgate.dns.discovery import make_resolver

_MARKS = {
    "ok": ("✓", "green"),
    "warning": ("!", "yellow"),
    "error": ("✗", "bold red"),
    "skipped": ("–", "dim"),
}
_LABEL_WIDTH = 10
MAX_CLOCK_OFFSET = 100 * 365 * 86400


def _print_finding(console: Console, finding: Finding) -> None:
    mark, style = _MARKS[finding.status]
    grid = Table.grid(padding=(0, 1))
    grid.add_column(width=_LABEL_WIDTH, no_wrap=True)
    grid.add_column()
    body = Text(finding.title, style="dim" if finding.status == "skipped" else "")
    if finding.status != "skipped":
        if finding.explanation:
            body.append("\n" + finding.explanation)
        if finding.fix and finding.status != "ok":
            body.append("\nFix: ", style="bold")
            body.append(finding.fix)
    grid.add_row(Text.assemble((f"{mark} ", style), (finding.step, "bold")), body)
    console.print(grid)


def _print(console: Console, run: Diagnosis) -> None:
    product = run.product
    console.print(
        Text.assemble(
            ("Diagnosing ", "bold"),
            f"{run.target} for {product.name} (N-count {product.n_count_policy})",
        )
    )
    for finding in run.findings:
        _print_finding(console, finding)
    code = run.exit_code
    if code == 0:
        console.print(Text("Everything checked is fine: this client can activate.", "bold green"))
    elif code == 1:
        console.print(Text("Activation works, with the warnings above.", "bold yellow"))
    else:
        step = next(name for name, value in EXIT_CODES.items() if value == code)
        console.print(Text(f"Activation fails at the {step} step (exit {code}).", "bold red"))


app = typer.Typer()


@app.command(name="diagnose")
def diagnose_command(
    target: Annotated[
        str | None,
        typer.Argument(
            metavar="[HOST[:PORT]]",
            help="KMS host to check (IPv6 as [ADDR]:PORT); omit for the _vlmcs._tcp "
            "records of the DNS search domains",
            show_default=False,
        ),
    ] = None,
    domain: Annotated[
        str | None,
        typer.Option(help="check the _vlmcs._tcp SRV records of this DNS domain"),
    ] = None,
    product: Annotated[
        str | None,
        typer.Option(help="product to ask for: name, GVLK or SKU id (default Windows 10/11 Pro)"),
    ] = None,
    protocol: Annotated[
        int | None,
        typer.Option(min=4, max=6, help="KMS protocol 4, 5 or 6 (default: the product's)"),
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=0.001, help="seconds per connect, bind or request")
    ] = 5.0,
    clock_offset: Annotated[
        float,
        typer.Option(
            min=-MAX_CLOCK_OFFSET,
            max=MAX_CLOCK_OFFSET,
            help="shift the request's time stamp by SECONDS, to reproduce a client whose "
            "clock is off (e.g. 21600 for 6 hours ahead)",
        ),
    ] = 0.0,
    clock_probe: Annotated[
        bool,
        typer.Option(
            "--clock-probe/--no-clock-probe",
            help="after a clock refusal, find the host's clock with shifted time stamps "
            "(a few dozen recorded requests)",
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    dns_server: Annotated[
        str | None,
        typer.Option(envvar=DNS_SERVER_ENV, hidden=True, help="only nameserver to ask"),
    ] = None,
) -> None:
    """Explain why a client cannot activate: DNS, TCP, RPC, the host's answer, clock.

    Exit status: 0 all fine, 1 warnings only, 2 usage error; else the first failing
    step: 3 DNS, 4 TCP, 5 RPC bind, 6 the host's answer, 7 product refused, 8 clock
    skew, 9 client count too low.
    """
    host: str | None = None
    port = 1688
    if target == "-":
        target = None
    if target is not None and target.startswith("."):
        domain = domain or target[1:]
        target = None
    if target is not None and domain is not None:
        raise typer.BadParameter("give HOST or --domain, not both")
    if target is not None:
        try:
            host, port = parse_target(target)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    try:
        nameserver = make_resolver(dns_server, timeout)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    catalog = default_catalog()
    sku = _resolve_sku(catalog, product, None)
    try:
        template = diagnose_template(
            sku, protocol=protocol, cmid=diagnose_cmid(socket.gethostname())
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    run = asyncio.run(
        diagnose(
            host=host,
            port=port,
            domain=domain,
            sku=sku,
            template=template,
            catalog=catalog,
            resolver=DnsResolver(nameserver),
            clock=time.time,
            clock_shift=clock_offset,
            timeout=timeout,
            probe_skew=clock_probe,
        )
    )
    if as_json:
        sys.stdout.write(json.dumps(run.to_json(), indent=2, ensure_ascii=False) + "\n")
    else:
        _print(Console(highlight=False), run)
    raise typer.Exit(run.exit_code)
