"""The `kmsgate` command line."""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import typer

from kmsgate import __version__

COMMANDS = (
    "serve",
    "client",
    "products",
    "records",
    "users",
    "audit",
    "db",
    "dns",
    "config_cmd",
    "identity",
    "diagnose",
    "report",
)
# Top-level command name -> module; `clients` and `stats` live in records, `config` in config_cmd.
_MODULE_OF = {"clients": "records", "stats": "records", "config": "config_cmd"}


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"kmsgate {__version__}")
        raise typer.Exit()


def create_app(commands: tuple[str, ...] = COMMANDS) -> typer.Typer:
    """The Typer application with the given command modules registered."""
    app = typer.Typer(
        name="kmsgate",
        help="KMS volume-activation host, strict client and authenticating gateway.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def root(
        version: Annotated[
            bool,
            typer.Option(
                "--version",
                help="print the version and exit",
                callback=_print_version,
                is_eager=True,
            ),
        ] = False,
    ) -> None:
        """KMS volume-activation host, strict client and authenticating gateway."""

    # With a callback the app stays a command group even when one command is registered.
    for name in commands:
        importlib.import_module(f"kmsgate.cli.{name}").register(app)
    return app


def main() -> None:
    """Console-script entry point."""
    # A long-running `serve` should not carry every other command's imports (SQLAlchemy,
    # Rich tables, the load generator) in memory: register only the command being run.
    wanted = sys.argv[1] if len(sys.argv) > 1 else ""
    module = _MODULE_OF.get(wanted, wanted)
    if wanted == "--version":
        create_app(())()
        return
    create_app((module,) if module in COMMANDS else COMMANDS)()
