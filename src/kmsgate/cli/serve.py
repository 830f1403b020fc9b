"""`kmsgate serve`: run the KMS host."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import typer
from pydantic import ValidationError

from kmsgate.config import ServeSettings, load_settings
from kmsgate.net import Peer
from kmsgate.observability.logs import setup_logging
from kmsgate.server.service import Service, check_startable
from kmsgate.server.systemd import notify_socket, sd_notify, watchdog_interval, watchdog_pings
from kmsgate.store.errors import StoreError

log = logging.getLogger("kmsgate.server")


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


def _configure_logging(settings: ServeSettings) -> None:
    setup_logging(
        settings.log_level,
        fmt=settings.log_format,
        file=settings.log_file,
        max_bytes=settings.log_max_bytes,
        backups=settings.log_backups,
    )


def _reload(service: Service, config: Path | None, cli: dict[str, Any]) -> None:
    """SIGHUP: read the settings again; apply policies and logging, keep connections."""
    try:
        settings = load_settings(config, **cli)
    except (ValidationError, FileNotFoundError, ValueError) as exc:
        log.error("reload refused, keeping the running settings: %s", exc)
        return
    _configure_logging(settings)
    service.reload(settings)
    log.info("settings reloaded")


async def run_service(
    settings: ServeSettings, config: Path | None = None, cli: dict[str, Any] | None = None
) -> None:
    """Serve until SIGINT/SIGTERM, then drain and flush; SIGHUP reloads the settings."""
    service = Service(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP, _reload, service, config, cli or {})
    notify = notify_socket()
    watchdog: asyncio.Task[None] | None = None
    try:
        async with service:
            assert service.host is not None
            # Listeners bound, privileges dropped, store and web up: systemd may go on.
            addresses = ", ".join(str(Peer(host, port)) for host, port in service.host.addresses)
            sd_notify(notify, "READY=1", f"STATUS=serving KMS on {addresses}")
            interval = watchdog_interval()
            if interval is not None:
                watchdog = asyncio.create_task(watchdog_pings(notify, interval))
            await stop.wait()
            sd_notify(notify, "STOPPING=1", "STATUS=stopping: draining connections")
            log.info("stopping: draining %d connections", len(service.host.connections))
    finally:
        # Pings go on while draining and flushing, which TimeoutStopSec bounds instead.
        if watchdog is not None:
            watchdog.cancel()
    stats = service.host.stats
    log.info("stopped after %d activations, %d refusals", stats.activations, stats.refusals)


def _run(settings: ServeSettings, config: Path | None, cli: dict[str, Any]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(run_service(settings, config, cli))
        return
    uvloop.run(run_service(settings, config, cli))


def _unwrap(annotation: Any) -> Any:
    return get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation


def _option_type(annotation: Any) -> Any:
    """The CLI type for a settings field: scalars stay, lists become repeatable options."""
    annotation = _unwrap(annotation)
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is list:
        return list[str] | None
    if get_origin(annotation) is Literal or (args and get_origin(args[0]) is Literal):
        return str | None
    base = args[0] if args else annotation
    # Nested models (the account backend) travel as JSON text, parsed by the settings model.
    return (base if base in (str, int, float, bool, Path) else str) | None


def settings_parameters(model: type[ServeSettings]) -> list[inspect.Parameter]:
    """One CLI option per settings field, so flags, env vars and file keys cannot drift."""
    params = [
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                Path | None,
                typer.Option(help="TOML config file (default /etc/kmsgate/kmsgate.toml)"),
            ],
        )
    ]
    for name, field in model.model_fields.items():
        flag = "--" + name.replace("_", "-")
        # A field named no_x is a plain switch (--no-web), not --no-web/--no-no-web.
        is_switch = field.annotation is bool and not name.startswith("no_")
        decls = [f"{flag}/--no-{flag[2:]}"] if is_switch else [flag]
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[
                    _option_type(field.annotation),
                    typer.Option(
                        *decls,
                        help=field.description,
                        show_default=False,
                        metavar="TEXT" if get_origin(_unwrap(field.annotation)) is list else None,
                    ),
                ],
            )
        )
    return params


def register(app: typer.Typer) -> None:
    """Add the `serve` command."""

    def serve(**options: Any) -> None:
        """Run the KMS host (TCP 1688 on IPv4 and IPv6 by default)."""
        config = options.pop("config")
        cli = {
            key: (value or None) if isinstance(value, list) else value
            for key, value in options.items()
        }
        settings = _settings_or_exit(config, **cli)
        try:
            check_startable(settings)
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        _configure_logging(settings)
        try:
            _run(settings, config, cli)
        except OSError as exc:
            log.error("cannot listen: %s", exc)
            raise typer.Exit(1) from None
        except StoreError as exc:
            log.error("cannot open the store: %s", exc)
            raise typer.Exit(1) from None
        except ValueError as exc:  # e.g. --user names nobody on this machine
            log.error("cannot start: %s", exc)
            raise typer.Exit(1) from None

    serve.__signature__ = inspect.Signature(settings_parameters(ServeSettings))  # type: ignore[attr-defined]
    app.command()(serve)
