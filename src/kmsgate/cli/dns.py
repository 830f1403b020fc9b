"""`kmsgate dns`: zone lines for the _vlmcs._tcp SRV record, and publishing it by RFC 2136."""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import socket
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from kmsgate.cli.common import fail
from kmsgate.cli.serve import settings_parameters
from kmsgate.config.explain import explain
from kmsgate.config.loading import load_settings
from kmsgate.config.settings import ServeSettings
from kmsgate.dns.records import SrvRecord, srv_records
from kmsgate.dns.update import DnsPublishError, UpdateResult, publish, unpublish

#: The serve options `dns publish`/`unpublish` take (besides --config).
DNS_OPTIONS = (
    "dns_domain",
    "dns_server",
    "dns_host",
    "dns_port",
    "dns_tsig_name",
    "dns_tsig_secret",
    "dns_tsig_algorithm",
    "dns_ttl",
    "dns_priority",
    "dns_weight",
)


def resolve_addresses(host: str) -> tuple[list[str], list[str]]:
    """(usable addresses of ``host``, skipped loopback ones) from the system resolver."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return [], []
    usable: list[str] = []
    skipped: list[str] = []
    for info in infos:
        text = str(info[4][0]).partition("%")[0]
        bucket = skipped if ipaddress.ip_address(text).is_loopback else usable
        if text not in bucket:
            bucket.append(text)
    return usable, skipped


def _settings(config: Path | None, cli: dict[str, Any]) -> ServeSettings:
    try:
        settings = load_settings(config, **cli)
    except ValidationError as exc:
        raise fail("; ".join(explain(exc, config)), 2) from None
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc), 2) from None
    for name in ("dns_domain", "dns_server"):
        if not getattr(settings, name):
            flag = "--" + name.replace("_", "-")
            raise fail(f"{flag} is needed (flag, KMSGATE_{name.upper()} or the config file)", 2)
    return settings


def _update(action: str, options: dict[str, Any]) -> UpdateResult:
    config = options.pop("config")
    settings = _settings(config, options)
    runner = publish if action == "publish" else unpublish
    try:
        return asyncio.run(runner(settings))
    except DnsPublishError as exc:
        raise fail(str(exc)) from None


app = typer.Typer(
    name="dns",
    help="The _vlmcs._tcp SRV record clients use to find this host.",
    no_args_is_help=True,
)


@app.command("record")
def record(
    domain: Annotated[str, typer.Option("--domain", help="DNS domain of the record")],
    host: Annotated[str, typer.Option("--host", help="host name the record points at")],
    port: Annotated[int, typer.Option("--port", help="KMS port")] = 1688,
    ttl: Annotated[int, typer.Option("--ttl", help="TTL in seconds")] = 3600,
    priority: Annotated[int, typer.Option("--priority", help="SRV priority")] = 0,
    weight: Annotated[int, typer.Option("--weight", help="SRV weight")] = 0,
    address: Annotated[
        list[str] | None,
        typer.Option(
            "--address",
            help="address of the host for A/AAAA lines (repeatable; default: resolve --host)",
        ),
    ] = None,
) -> None:
    """Print zone-file lines for manual setup: the SRV record and the host's A/AAAA."""
    addresses = address
    if addresses is None:
        try:
            target = SrvRecord.make(domain, host).target.to_text(omit_final_dot=True)
        except ValueError as exc:
            raise fail(str(exc)) from None
        addresses, skipped = resolve_addresses(target)
        for text in skipped:
            typer.echo(f"warning: skipped loopback address {text} of {target}", err=True)
        if not addresses:
            typer.echo(
                f"warning: {target} has no usable address; give --address for A/AAAA lines",
                err=True,
            )
    try:
        lines = srv_records(domain, host, port, priority, weight, ttl, addresses)
    except ValueError as exc:
        raise fail(str(exc)) from None
    typer.echo("\n".join(lines))


def publish_command(**options: Any) -> None:
    """Add or replace this host's SRV record on the DNS server (other hosts' stay)."""
    result = _update("publish", options)
    replaced = f" (replaced {', '.join(result.removed)})" if result.removed else ""
    typer.echo(f"published {result.record.to_text()}{replaced}")


def unpublish_command(**options: Any) -> None:
    """Delete this host's SRV record from the DNS server (other hosts' stay)."""
    result = _update("unpublish", options)
    if result.removed:
        for rdata in result.removed:
            typer.echo(f"removed {result.record.owner} SRV {rdata}")
    else:
        typer.echo(f"{result.record.owner} held no record for {result.record.target}")


parameters = [
    param
    for param in settings_parameters(ServeSettings)
    if param.name == "config" or param.name in DNS_OPTIONS
]
for function, name in ((publish_command, "publish"), (unpublish_command, "unpublish")):
    function.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    app.command(name)(function)
