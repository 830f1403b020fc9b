"""The `kmsgate` command line."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from kmsgate import __version__

#: Every top-level command, in the order `kmsgate --help` lists them, and the module under
#: kmsgate.cli whose module-level `app` declares it.
COMMANDS = {
    "serve": "serve",
    "client": "client",
    "clients": "records",
    "stats": "records",
    "audit": "audit",
    "diagnose": "diagnose",
    "report": "report",
    "products": "products",
    "users": "users",
    "db": "db",
    "dns": "dns",
    "config": "config_cmd",
    "identity": "identity",
}


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"kmsgate {__version__}")
        raise typer.Exit()


def _holder() -> None:
    """Stand-in root while one command is built."""


def build_command(name: str) -> TyperCommand | TyperGroup:
    """The Click command `name`, built from its module's Typer app (imported here)."""
    module = importlib.import_module(f"kmsgate.cli.{COMMANDS[name]}")
    holder = typer.Typer()
    # A callback keeps the holder a group, so a one-command sub-app (db) stays a group.
    holder.callback()(_holder)
    # Unnamed, a sub-app's commands join the holder; a named one (users) becomes a group.
    holder.add_typer(module.app)
    group = typer.main.get_command(holder)
    assert isinstance(group, TyperGroup)
    command = group.commands[name]
    assert isinstance(command, TyperCommand | TyperGroup)
    return command


class _Commands(MutableMapping[str, Any]):
    """The top-level commands, each built on first use.

    A long-running `serve` then holds only its own command and imports (not SQLAlchemy,
    Rich tables or the load generator), and `--version` builds none.
    """

    def __init__(self) -> None:
        self._built: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in COMMANDS:
            raise KeyError(name)
        if name not in self._built:
            self._built[name] = build_command(name)
        return self._built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        raise TypeError(f"add {name!r} to kmsgate.cli.COMMANDS instead")

    def __delitem__(self, name: str) -> None:
        raise TypeError(f"cannot remove the command {name!r}")

    def __iter__(self) -> Iterator[str]:
        return iter(COMMANDS)

    def __len__(self) -> int:
        return len(COMMANDS)


class KmsgateGroup(TyperGroup):
    """The root group: its commands come from COMMANDS, built when looked up."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.commands = _Commands()


def create_app() -> typer.Typer:
    """The Typer application of every kmsgate command."""
    app = typer.Typer(
        name="kmsgate",
        cls=KmsgateGroup,
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

    return app


app = create_app()


def main() -> None:
    """Console-script entry point."""
    app()
