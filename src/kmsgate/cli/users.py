"""`kmsgate users`: accounts of the dashboard (and of the gateway portal)."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kmsgate.auth.passwords import hash_password
from kmsgate.cli.common import (
    ConfigOption,
    DataDirOption,
    DbOption,
    JsonOption,
    fail,
    print_json,
    resolve_settings,
    with_store,
)
from kmsgate.config import ServeSettings
from kmsgate.store.database import Store
from kmsgate.store.errors import UserExists, UserNotFound
from kmsgate.store.gateway import GatewayStore

NameArgument = Annotated[str, typer.Argument(help="user name")]
StdinOption = Annotated[
    bool, typer.Option("--password-stdin", help="read the password from standard input")
]


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise fail("the password must not be empty", 2)
    return password


def _valid_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 64 or any(c.isspace() or not c.isprintable() for c in name):
        raise fail("a user name is 1-64 printable characters without spaces", 2)
    return name


def _for_existing_user(
    settings: ServeSettings, name: str, action: Callable[[Store], Awaitable[None]]
) -> None:
    """Run `action` on the store; an unknown user name exits with a clear message."""
    try:
        with_store(settings, action)
    except UserNotFound:
        raise fail(f"no user {name!r}") from None


def register(app: typer.Typer) -> None:
    """Add the `users` command group."""
    group = typer.Typer(help="Manage user accounts.", no_args_is_help=True)

    @group.command("add")
    def add(
        name: NameArgument,
        admin: Annotated[bool, typer.Option("--admin", help="may use the dashboard")] = False,
        password_stdin: StdinOption = False,
        config: ConfigOption = None,
        db: DbOption = None,
        data_dir: DataDirOption = None,
    ) -> None:
        """Create a user with an argon2-hashed password."""
        name = _valid_name(name)
        settings = resolve_settings(config, db, data_dir)
        hashed = hash_password(_read_password(password_stdin))

        async def action(store: Store) -> None:
            await store.add_user(name, hashed, is_admin=admin)

        try:
            with_store(settings, action)
        except UserExists:
            raise fail(f"user {name!r} already exists") from None
        typer.echo(f"added {'admin ' if admin else ''}user {name}")

    @group.command("passwd")
    def passwd(
        name: NameArgument,
        password_stdin: StdinOption = False,
        config: ConfigOption = None,
        db: DbOption = None,
        data_dir: DataDirOption = None,
    ) -> None:
        """Set a user's password."""
        settings = resolve_settings(config, db, data_dir)
        hashed = hash_password(_read_password(password_stdin))

        async def action(store: Store) -> None:
            await store.set_password(name, hashed)

        _for_existing_user(settings, name, action)
        typer.echo(f"password of {name} changed")

    @group.command("remove")
    def remove(
        name: NameArgument,
        config: ConfigOption = None,
        db: DbOption = None,
        data_dir: DataDirOption = None,
    ) -> None:
        """Delete a user."""
        settings = resolve_settings(config, db, data_dir)

        async def action(store: Store) -> None:
            await store.remove_user(name)

        _for_existing_user(settings, name, action)
        typer.echo(f"removed user {name}")

    @group.command("list")
    def list_users(
        json_output: JsonOption = False,
        config: ConfigOption = None,
        db: DbOption = None,
        data_dir: DataDirOption = None,
    ) -> None:
        """List users (never their password hashes)."""
        settings = resolve_settings(config, db, data_dir)
        users = with_store(settings, lambda store: store.list_users())
        if json_output:
            print_json(
                [
                    {"name": u.name, "admin": u.is_admin, "disabled": u.disabled,
                     "created": u.created}
                    for u in users
                ]
            )  # fmt: skip
            return
        table = Table("user", "admin", "disabled", "created")
        for user in users:
            table.add_row(
                user.name,
                "yes" if user.is_admin else "no",
                "yes" if user.disabled else "no",
                f"{user.created:%Y-%m-%d %H:%M}",
            )
        Console().print(table)

    @group.command("quota")
    def quota(
        name: NameArgument,
        week: Annotated[
            int | None, typer.Option(min=0, help="activations per rolling week")
        ] = None,
        month: Annotated[
            int | None, typer.Option(min=0, help="activations per rolling 30 days")
        ] = None,
        config: ConfigOption = None,
        db: DbOption = None,
        data_dir: DataDirOption = None,
    ) -> None:
        """Set a user's quota overrides; without --week/--month the host-wide defaults apply."""
        settings = resolve_settings(config, db, data_dir)

        async def action(store: Store) -> None:
            await GatewayStore(store).set_quota(name, week, month)

        _for_existing_user(settings, name, action)
        shown = ", ".join(
            f"{label} {value if value is not None else 'default'}"
            for label, value in (("week", week), ("month", month))
        )
        typer.echo(f"quota of {name}: {shown}")

    app.add_typer(group, name="users")
