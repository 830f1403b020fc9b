"""`kmsgate serve`: run the KMS host."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import typer
from pydantic import ValidationError

from kmsgate.cli.help import SettingsHelpCommand
from kmsgate.config.explain import explain
from kmsgate.config.loading import effective_config_file, load_settings
from kmsgate.config.panels import PANELS
from kmsgate.config.reference import field_panel
from kmsgate.config.settings import ServeSettings
from kmsgate.heap import share_one_malloc_arena
from kmsgate.node import run_node
from kmsgate.observability.logs import setup_logging
from kmsgate.server.preflight import preflight
from kmsgate.store.errors import StoreError

log = logging.getLogger("kmsgate.server")


def _settings_or_exit(config: Path | None, **cli: object) -> ServeSettings:
    """Load settings; on a bad value print one line per problem and exit with status 2."""
    try:
        return load_settings(config, **cli)
    except ValidationError as exc:
        problems = explain(exc, effective_config_file(config))
    except tomllib.TOMLDecodeError as exc:
        problems = [f"{effective_config_file(config)}: TOML syntax error: {exc}"]
    except (FileNotFoundError, ValueError) as exc:
        problems = [str(exc)]
    typer.echo("\n".join(f"error: {problem}" for problem in problems), err=True)
    raise typer.Exit(2)


def _preflight_or_exit(settings: ServeSettings) -> None:
    """Stop before anything starts (no migration, no writer) when the node cannot run."""
    problems = preflight(settings)
    if problems:
        typer.echo("\n".join(f"error: {problem.message}" for problem in problems), err=True)
        raise typer.Exit(2 if any(problem.usage for problem in problems) else 1)


def _configure_logging(settings: ServeSettings) -> None:
    setup_logging(
        settings.log_level,
        fmt=settings.log_format,
        file=settings.log_file,
        max_bytes=settings.log_max_bytes,
        backups=settings.log_backups,
    )


def _reloaded_settings(config: Path | None, cli: dict[str, Any]) -> ServeSettings | None:
    """SIGHUP: the settings read again with logging reconfigured, or None when they are bad."""
    try:
        settings = load_settings(config, **cli)
    except ValidationError as exc:
        log.error("reload refused, keeping the running settings: %s", "; ".join(explain(exc)))
        return None
    except (FileNotFoundError, ValueError) as exc:
        log.error("reload refused, keeping the running settings: %s", exc)
        return None
    _configure_logging(settings)
    for warning in settings.warnings():
        log.warning("%s", warning)
    return settings


async def run_service(
    settings: ServeSettings, config: Path | None = None, cli: dict[str, Any] | None = None
) -> None:
    """Serve until SIGINT/SIGTERM, then drain and flush; SIGHUP reloads the settings."""
    await run_node(settings, functools.partial(_reloaded_settings, config, cli or {}))


def _run(settings: ServeSettings, config: Path | None, cli: dict[str, Any]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(run_service(settings, config, cli))
        return
    uvloop.run(run_service(settings, config, cli))


def _unwrap(annotation: Any) -> Any:
    return get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation


def _is_list(annotation: Any) -> bool:
    """Whether a field holds a list (`list[str]` or `list[str] | None`)."""
    annotation = _unwrap(annotation)
    if get_origin(annotation) is list:
        return True
    return any(get_origin(arg) is list for arg in get_args(annotation))


def _option_type(annotation: Any) -> Any:
    """The CLI type of a settings field: switches stay bool, lists repeat, the rest is text.

    Values reach the settings model as text, so a wrong one is reported by kmsgate in the
    user's words (`client_count: 'many' is not a whole number`), not by the CLI parser.
    """
    if _is_list(annotation):
        # A list-typed option repeats (--allow A --allow B) and accumulates.
        return list[str] | None
    return (bool if _unwrap(annotation) is bool else str) | None


def _metavar(name: str, annotation: Any) -> str | None:
    """What the help shows after a flag: the choices of a Literal, else the value's type."""
    if _is_list(annotation):
        return "<str>"
    inner = _unwrap(annotation)
    args = [a for a in get_args(inner) if a is not type(None)] or [inner]
    literal = next((a for a in args if get_origin(a) is Literal), None)
    if literal is not None:
        return "|".join(str(choice) for choice in get_args(literal))
    if name == "accounts":
        return "JSON"
    labels = {int: "<int>", float: "<float>", Path: "<path>", bool: None}
    return labels.get(args[0], "<str>")


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
    order = list(PANELS)
    # Grouped by help panel, in the panels' order; within a panel, the model's order.
    fields = sorted(model.model_fields.items(), key=lambda item: order.index(field_panel(item[0])))
    for name, field in fields:
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
                        metavar=_metavar(name, field.annotation),
                        rich_help_panel=PANELS[field_panel(name)],
                    ),
                ],
            )
        )
    return params


def serve(**options: Any) -> None:
    """Run the KMS host (TCP 1688 on IPv4 and IPv6 by default)."""
    config = options.pop("config")
    cli = {
        key: (value or None) if isinstance(value, list) else value for key, value in options.items()
    }
    settings = _settings_or_exit(config, **cli)
    if not settings.no_store:
        # Before any thread starts. The store's connection threads are what it is for; a
        # node without them would only carry ctypes (0.4 MiB of its 45).
        share_one_malloc_arena()
    _preflight_or_exit(settings)
    _configure_logging(settings)
    for warning in settings.warnings():
        log.warning("%s", warning)
    if settings.db_note and not settings.no_store:
        log.info("%s", settings.db_note)
    try:
        _run(settings, config, cli)
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        raise typer.Exit(1) from None
    except StoreError as exc:
        from kmsgate.cli.common import store_failure

        log.error("cannot open the store: %s", store_failure(settings.db_url, exc))
        raise typer.Exit(1) from None
    except ValueError as exc:  # e.g. --user names nobody on this machine
        log.error("cannot start: %s", exc)
        raise typer.Exit(1) from None


serve.__signature__ = inspect.Signature(settings_parameters(ServeSettings))  # type: ignore[attr-defined]
app = typer.Typer()
app.command(cls=SettingsHelpCommand)(serve)
