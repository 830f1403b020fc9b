"""`kmsgate serve`: run the KMS host."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from kmsgate.config import ServeSettings, load_settings
from kmsgate.observability.logs import setup_logging
from kmsgate.server.host import KmsHost

log = logging.getLogger("kmsgate.server")


def _help(name: str) -> str:
    return ServeSettings.model_fields[name].description or ""


def _settings_or_exit(config: Path | None, **cli: object) -> ServeSettings:
    """Load settings; on a bad value print one line per problem and exit with status 2."""
    try:
        return load_settings(config, **cli)
    except ValidationError as exc:
        problems = [
            f"error: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        ]
    except (FileNotFoundError, ValueError) as exc:
        problems = [f"error: {exc}"]
    typer.echo("\n".join(problems), err=True)
    raise typer.Exit(2)


async def run_host(settings: ServeSettings) -> None:
    """Serve until SIGINT/SIGTERM, then drain."""
    host = KmsHost(settings)
    await host.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("stopping: draining %d connections", len(host.connections))
    await host.stop()
    log.info(
        "stopped after %d activations, %d refusals", host.stats.activations, host.stats.refusals
    )


def _run(settings: ServeSettings) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(run_host(settings))
        return
    uvloop.run(run_host(settings))


def register(app: typer.Typer) -> None:
    """Add the `serve` command."""

    @app.command()
    def serve(
        config: Annotated[
            Path | None, typer.Option(help="TOML config file (default /etc/kmsgate/kmsgate.toml)")
        ] = None,
        listen: Annotated[list[str] | None, typer.Option(help=_help("listen"))] = None,
        epid: Annotated[str | None, typer.Option(help=_help("epid"))] = None,
        hwid: Annotated[str | None, typer.Option(help=_help("hwid"))] = None,
        lcid: Annotated[int | None, typer.Option(help=_help("lcid"))] = None,
        client_count: Annotated[int | None, typer.Option(help=_help("client_count"))] = None,
        activation_interval: Annotated[
            int | None, typer.Option(help=_help("activation_interval"))
        ] = None,
        renewal_interval: Annotated[
            int | None, typer.Option(help=_help("renewal_interval"))
        ] = None,
        ndr64: Annotated[
            bool | None, typer.Option("--ndr64/--no-ndr64", help=_help("ndr64"))
        ] = None,
        btfn: Annotated[bool | None, typer.Option("--btfn/--no-btfn", help=_help("btfn"))] = None,
        max_connections: Annotated[int | None, typer.Option(help=_help("max_connections"))] = None,
        idle_timeout: Annotated[float | None, typer.Option(help=_help("idle_timeout"))] = None,
        max_clock_skew: Annotated[int | None, typer.Option(help=_help("max_clock_skew"))] = None,
        log_level: Annotated[str | None, typer.Option(help=_help("log_level"))] = None,
    ) -> None:
        """Run the KMS host (TCP 1688 on IPv4 and IPv6 by default)."""
        settings = _settings_or_exit(
            config,
            listen=listen or None,
            epid=epid,
            hwid=hwid,
            lcid=lcid,
            client_count=client_count,
            activation_interval=activation_interval,
            renewal_interval=renewal_interval,
            ndr64=ndr64,
            btfn=btfn,
            max_connections=max_connections,
            idle_timeout=idle_timeout,
            max_clock_skew=max_clock_skew,
            log_level=log_level,
        )
        setup_logging(settings.log_level)
        try:
            _run(settings)
        except OSError as exc:
            log.error("cannot listen: %s", exc)
            raise typer.Exit(1) from None
