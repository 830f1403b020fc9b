"""`kmsgate client`: a strict KMS client (vlmcs-like) and a bounded load generator."""

from __future__ import annotations

import json
import sys
import uuid
from dataclasses import dataclass, field
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from kmsgate.catalog import Catalog, Sku, default_catalog
from kmsgate.cli.client_output import print_header, print_load, print_result
from kmsgate.cli.client_records import error_record, product_record, result_record
from kmsgate.client.activation import KmsClient, activate_first_reachable
from kmsgate.client.connection import DEFAULT_PORT
from kmsgate.client.errors import (
    KmsConnectionError,
    NoHostReachableError,
    ResponseVerificationError,
    describe_error,
)
from kmsgate.client.exchange import ActivationResult, RequestTemplate
from kmsgate.client.loadgen import LoadResult, LoadSettings, run_load, run_sync
from kmsgate.dns.discovery import (
    DiscoveryError,
    KmsHostCandidate,
    discover_endpoints,
    parse_nameserver,
)
from kmsgate.errors import KmsgateError
from kmsgate.net import Endpoint, parse_endpoint

#: Default product: the most common volume client, Windows 10/11 Pro (GVLK W269N-...;
#: KMS id "Windows 10/11 2015 (Volume)", protocol v6, N-count 25).
DEFAULT_SKU = uuid.UUID("2de67392-b7a7-462a-b1ca-108dd189f588")
#: Hidden test hook: ask only this nameserver (ADDR[:PORT]) for SRV and A/AAAA records.
DNS_SERVER_ENV = "KMSGATE_CLIENT_DNS_SERVER"

EXIT_ACTIVATION_FAILED = 1
EXIT_NO_HOST = 3


def parse_target(text: str) -> tuple[str, int]:
    """Split `HOST`, `HOST:PORT`, `[V6]`, `[V6]:PORT` or a bare IPv6 literal (port 1688)."""
    endpoint = parse_endpoint(text, default_port=DEFAULT_PORT, what="KMS host")
    assert endpoint.port is not None  # default_port
    return endpoint.host, endpoint.port


@dataclass
class Target:
    """Where to send requests: one explicit host, or SRV candidates in try order."""

    endpoints: list[tuple[str, int]]
    discovered_via: str | None = None
    candidates: list[KmsHostCandidate] = field(default_factory=list)


async def _discover(domain: str | None, nameserver: str | None, timeout: float) -> Target:
    found = await discover_endpoints(domain, nameserver=nameserver, timeout=timeout)
    return Target(found.endpoints, found.via, found.candidates)


def _resolve_sku(catalog: Catalog, product: str | None, sku_id: str | None) -> Sku:
    if product and sku_id:
        raise typer.BadParameter("give --product or --sku, not both")
    try:
        if sku_id is not None:
            try:
                guid = uuid.UUID(sku_id)
            except ValueError:
                raise typer.BadParameter(f"--sku {sku_id!r} is not a GUID") from None
            sku = catalog.sku(guid)
            if sku is None:
                raise LookupError(f"unknown SKU id {guid}; see `kmsgate products --search`")
            return sku
        if product is not None:
            return catalog.resolve_product(product)
        sku = catalog.sku(DEFAULT_SKU)
        if sku is None:
            raise LookupError(f"the default SKU {DEFAULT_SKU} is missing from the catalogue")
        return sku
    except LookupError as exc:
        raise typer.BadParameter(str(exc)) from None


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _exit_code(exc: BaseException) -> int:
    return EXIT_NO_HOST if isinstance(exc, KmsConnectionError | DiscoveryError) else 1


@dataclass
class _Run:
    """What one `kmsgate client` invocation produced."""

    target: Target | None = None
    used: tuple[str, int] | None = None
    results: list[ActivationResult] = field(default_factory=list)
    failures: list[tuple[str, KmsConnectionError]] = field(default_factory=list)
    error: BaseException | None = None


async def _activate(
    client: KmsClient,
    target_text: str | None,
    domain: str | None,
    nameserver: str | None,
    count: int,
    fresh: bool,
) -> _Run:
    run = _Run()
    try:
        run.target = await _target(target_text, domain, nameserver, client.timeout)
        if run.target.discovered_via is None:
            ((host, port),) = run.target.endpoints
            run.used = host, port
            await client.activate(
                host, port, count=count, fresh_connections=fresh, on_result=run.results.append
            )
        else:
            run.used, _, run.failures = await activate_first_reachable(
                client,
                run.target.endpoints,
                count=count,
                fresh_connections=fresh,
                on_result=run.results.append,
            )
    except ResponseVerificationError as exc:
        run.results.append(exc.result)
        run.error = exc
    except NoHostReachableError as exc:
        run.failures = list(exc.attempts)
        run.error = exc
    except (KmsgateError, ValueError) as exc:
        run.error = exc
    return run


async def _target(
    target_text: str | None, domain: str | None, nameserver: str | None, timeout: float
) -> Target:
    if target_text is not None and target_text != "-" and not target_text.startswith("."):
        return Target([parse_target(target_text)])
    if target_text is not None and target_text.startswith("."):
        domain = target_text[1:]
    return await _discover(domain, nameserver, timeout)


def run_client(
    *,
    target_text: str | None,
    sku: Sku,
    template: RequestTemplate,
    catalog: Catalog,
    ndr64: bool,
    btfn: bool,
    timeout: float,
    count: int,
    fresh: bool,
    domain: str | None,
    nameserver: str | None,
    as_json: bool,
) -> int:
    """Activate `count` times and report; returns the exit code."""
    client = KmsClient(template, ndr64=ndr64, btfn=btfn, timeout=timeout)
    run = run_sync(
        _activate(client, target_text, domain, nameserver, count, fresh), use_uvloop=False
    )
    ok = run.error is None and len(run.results) == count and all(r.ok for r in run.results)
    if as_json:
        doc = {
            "ok": ok,
            "product": product_record(catalog, sku, template),
            "settings": {
                "protocol": template.major_version,
                "ndr64": ndr64,
                "btfn": btfn,
                "count": count,
                "fresh_connections": fresh,
                "timeout_s": timeout,
            },
            "target": {
                "host": run.used[0] if run.used else None,
                "port": run.used[1] if run.used else None,
                "discovered_via": run.target.discovered_via if run.target else None,
                "candidates": [
                    {"host": c.host, "port": c.port, "priority": c.priority, "weight": c.weight}
                    for c in (run.target.candidates if run.target else [])
                ],
                "unreachable": [{"endpoint": w, "error": str(e)} for w, e in run.failures],
            },
            "requests": [result_record(i, r) for i, r in enumerate(run.results, 1)],
            "error": None if run.error is None else error_record(run.error),
        }
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        console = Console(highlight=False, soft_wrap=True)
        target = run.target or Target([])
        print_header(console, catalog, sku, template, target.discovered_via, target.candidates)
        for where, exc in run.failures:
            console.print(Text(f"unreachable {where}: {exc}", style="yellow"))
        for index, result in enumerate(run.results, 1):
            print_result(console, index, result)
        if ok:
            console.print(Text(f"✓ activated {count}/{count}", style="bold green"))
    if run.error is not None:
        raise _fail(describe_error(run.error), _exit_code(run.error))
    if not ok:
        raise _fail("not every request activated", EXIT_ACTIVATION_FAILED)
    return 0


def run_load_command(
    *,
    target_text: str | None,
    template: RequestTemplate,
    ndr64: bool,
    btfn: bool,
    timeout: float,
    settings: LoadSettings,
    domain: str | None,
    nameserver: str | None,
    as_json: bool,
) -> int:
    """Run the load generator against the host (the first SRV candidate when discovering)."""
    client = KmsClient(template, ndr64=ndr64, btfn=btfn, timeout=timeout)

    async def go() -> tuple[tuple[str, int], LoadResult]:
        target = await _target(target_text, domain, nameserver, timeout)
        if not target.endpoints:
            raise DiscoveryError("the SRV targets have no address")
        host, port = target.endpoints[0]
        return (host, port), await run_load(client, host, port, settings)

    try:
        (host, port), result = run_sync(go())
    except (KmsgateError, ValueError) as exc:
        raise _fail(describe_error(exc), _exit_code(exc)) from None
    where = str(Endpoint(host, port))
    if as_json:
        doc = {"ok": result.failed == 0, "host": host, "port": port, **result.summary()}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        print_load(Console(highlight=False, soft_wrap=True), result, where)
    if result.succeeded == 0 or result.failed:
        top = result.errors.most_common(1)
        reason = f"{top[0][1]} × {top[0][0]}" if top else "nothing activated"
        raise _fail(f"{result.failed} of {result.attempted} activations failed ({reason})", 1)
    return 0


app = typer.Typer()


@app.command()
def client(
    target: Annotated[
        str | None,
        typer.Argument(
            metavar="HOST[:PORT]",
            help="KMS host (IPv6 as [ADDR]:PORT); omit, '-' or '.DOMAIN' for DNS discovery",
            show_default=False,
        ),
    ] = None,
    product: Annotated[
        str | None,
        typer.Option(help="product: SKU name, GVLK, SKU id or unique name part"),
    ] = None,
    sku: Annotated[str | None, typer.Option(help="SKU (activation) id GUID")] = None,
    protocol: Annotated[
        int | None,
        typer.Option(min=4, max=6, help="KMS protocol 4, 5 or 6 (default: the product's)"),
    ] = None,
    ndr64: Annotated[bool, typer.Option("--ndr64/--no-ndr64", help="offer NDR64")] = True,
    btfn: Annotated[
        bool, typer.Option("--btfn/--no-btfn", help="offer bind-time feature negotiation")
    ] = True,
    cmid: Annotated[
        str | None, typer.Option(help="client machine id GUID (default: random per request)")
    ] = None,
    machine_name: Annotated[
        str | None, typer.Option(help="machine name (default: random DNS-like per request)")
    ] = None,
    count: Annotated[
        int,
        typer.Option(
            min=1,
            help="requests per connection (first NDR32, then NDR64 when the host accepts)",
        ),
    ] = 1,
    fresh_connections: Annotated[
        bool, typer.Option("--fresh-connections", help="a new TCP connection per request")
    ] = False,
    timeout: Annotated[
        float, typer.Option(min=0.001, help="seconds per connect, bind or request")
    ] = 5.0,
    domain: Annotated[
        str | None,
        typer.Option(help="DNS domain whose _vlmcs._tcp SRV records name the KMS hosts"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    load: Annotated[
        int | None,
        typer.Option(min=1, help="load generator: this many activations in total"),
    ] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, help="load generator: activations in flight")
    ] = 8,
    duration_limit: Annotated[
        float, typer.Option(min=0.001, help="load generator: stop after this many seconds")
    ] = 30.0,
    dns_server: Annotated[
        str | None,
        typer.Option(envvar=DNS_SERVER_ENV, hidden=True, help="only nameserver to ask"),
    ] = None,
) -> None:
    """Activate against a KMS host and verify every answer strictly (like vlmcs)."""
    catalog = default_catalog()
    chosen = _resolve_sku(catalog, product, sku)
    try:
        fixed_cmid = None if cmid is None else uuid.UUID(cmid)
    except ValueError:
        raise typer.BadParameter(f"--cmid {cmid!r} is not a GUID") from None
    if target is not None and target not in ("-",) and not target.startswith("."):
        try:
            parse_target(target)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    if dns_server is not None:
        try:
            parse_nameserver(dns_server)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    try:
        template = RequestTemplate.from_sku(
            chosen, protocol=protocol, client_machine_id=fixed_cmid, machine_name=machine_name
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if load is not None:
        settings = LoadSettings(
            total=load,
            concurrency=concurrency,
            duration_limit=duration_limit,
            requests_per_connection=1 if fresh_connections else count,
        )
        run_load_command(
            target_text=target,
            template=template,
            ndr64=ndr64,
            btfn=btfn,
            timeout=timeout,
            settings=settings,
            domain=domain,
            nameserver=dns_server,
            as_json=as_json,
        )
        return
    run_client(
        target_text=target,
        sku=chosen,
        template=template,
        catalog=catalog,
        ndr64=ndr64,
        btfn=btfn,
        timeout=timeout,
        count=count,
        fresh=fresh_connections,
        domain=domain,
        nameserver=dns_server,
        as_json=as_json,
    )
