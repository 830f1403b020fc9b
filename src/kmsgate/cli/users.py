"""`kmsgate users`: accounts of the dashboard (and of the gateway portal)."""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated

import typer
from pydantic import BaseModel, TypeAdapter
from rich.console import Console
from rich.table import Table

from kmsgate.auth.passwords import MAX_PASSWORD_LENGTH, hash_password
from kmsgate.cli.common import (
    JsonOption,
    StoreOptions,
    fail,
    require_db_folder,
    store_command,
    with_store,
)
from kmsgate.config.settings import ServeSettings
from kmsgate.observability.display import rich_cell
from kmsgate.store.audit import AuditEvent
from kmsgate.store.database import Store
from kmsgate.store.errors import UserExists, UserNotFound
from kmsgate.store.gateway import GatewayStore

# The audit rows of account changes made here name this backend.
AUDIT_BACKEND = "cli"

NameArgument = Annotated[str, typer.Argument(help="user name")]
StdinOption = Annotated[
    bool, typer.Option("--password-stdin", help="read the password from standard input")
]
# Text, checked by the settings model, so a bad value is worded as for serve.
MinLengthOption = Annotated[
    str | None,
    typer.Option(
        "--min-password-length",
        metavar="<int>",
        help="characters a password needs at least (as serve; default 12)",
    ),
]


class UserModel(BaseModel):
    """One account as `users list --json` prints it (never its password hash)."""

    name: str
    admin: bool
    disabled: bool
    created: datetime


def _read_password(from_stdin: bool, min_length: int) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise fail("the password must not be empty", 2)
    if len(password) < min_length:
        raise fail(
            f"the password has {len(password)} characters; it needs at least {min_length} "
            "(min_password_length: --min-password-length, KMSGATE_MIN_PASSWORD_LENGTH or the "
            "config file)",
            2,
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise fail(f"the password has more than {MAX_PASSWORD_LENGTH} characters", 2)
    return password


def _valid_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 64 or any(c.isspace() or not c.isprintable() for c in name):
        raise fail("a user name is 1-64 printable characters without spaces", 2)
    return name


def _operator() -> str:
    """Who ran the command, for the audit row: the login behind sudo too."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container's bare uid)
        who = "?"
    sudo = os.environ.get("SUDO_USER")
    via = f" via sudo from {sudo}" if sudo and sudo != who else ""
    return f"by {who} (uid {os.getuid()}){via} on the command line"


async def _audit(store: Store, settings: ServeSettings, kind: str, name: str, what: str) -> None:
    """One audit row of an account change, written after the change itself."""
    event = AuditEvent(
        time=datetime.now(UTC),
        kind=kind,
        node=settings.node_name,
        username=name,
        address="",
        backend=AUDIT_BACKEND,
        detail=f"{what}, {_operator()}" if what else _operator(),
    )
    await GatewayStore(store).add_audit([event])


def _for_existing_user(
    settings: ServeSettings, name: str, action: Callable[[Store], Awaitable[None]]
) -> None:
    """Run `action` on the store; an unknown user name exits with a clear message."""
    try:
        with_store(settings, action, must_exist=True)
    except UserNotFound:
        raise fail(f"no user {name!r}") from None


app = typer.Typer(name="users", help="Manage user accounts.", no_args_is_help=True)


@app.command("add")
@store_command
def add(
    store_options: StoreOptions,
    name: NameArgument,
    admin: Annotated[bool, typer.Option("--admin", help="may use the dashboard")] = False,
    password_stdin: StdinOption = False,
    min_password_length: MinLengthOption = None,
) -> None:
    """Create a user with an argon2-hashed password (creates the database if need be)."""
    name = _valid_name(name)
    settings = store_options.settings(min_password_length=min_password_length)
    require_db_folder(settings)
    hashed = hash_password(_read_password(password_stdin, settings.min_password_length))
    path = settings.db_path
    created = path is not None and not path.exists()

    async def action(store: Store) -> None:
        await store.add_user(name, hashed, is_admin=admin)
        role = "an administrator" if admin else "a portal user"
        await _audit(store, settings, "user_added", name, role)

    try:
        with_store(settings, action)
    except UserExists:
        raise fail(f"user {name!r} already exists") from None
    if created:
        typer.echo(f"created the database {path}", err=True)
    typer.echo(f"added {'admin ' if admin else ''}user {name}")


@app.command("passwd")
@store_command
def passwd(
    store_options: StoreOptions,
    name: NameArgument,
    password_stdin: StdinOption = False,
    min_password_length: MinLengthOption = None,
) -> None:
    """Set a user's password."""
    settings = store_options.settings(min_password_length=min_password_length)
    hashed = hash_password(_read_password(password_stdin, settings.min_password_length))

    async def action(store: Store) -> None:
        await store.set_password(name, hashed)
        await _audit(store, settings, "password_changed", name, "")

    _for_existing_user(settings, name, action)
    typer.echo(f"password of {name} changed")


@app.command("remove")
@store_command
def remove(
    store_options: StoreOptions,
    name: NameArgument,
) -> None:
    """Delete a user."""
    settings = store_options.settings()

    async def action(store: Store) -> None:
        await store.remove_user(name)
        await _audit(store, settings, "user_removed", name, "")

    _for_existing_user(settings, name, action)
    typer.echo(f"removed user {name}")


@app.command("list")
@store_command
def list_users(
    store_options: StoreOptions,
    json_output: JsonOption = False,
) -> None:
    """List users (never their password hashes)."""
    settings = store_options.settings()
    users = with_store(settings, lambda store: store.list_users(), must_exist=True)
    if json_output:
        models = [
            UserModel(
                name=u.name,
                admin=u.is_admin,
                disabled=u.disabled,
                # SQLite hands back naive datetimes; the store writes UTC.
                created=u.created if u.created.tzinfo else u.created.replace(tzinfo=UTC),
            )
            for u in users
        ]
        typer.echo(TypeAdapter(list[UserModel]).dump_json(models, indent=2).decode())
        return
    table = Table("user", "admin", "disabled", "created")
    for user in users:
        table.add_row(
            rich_cell(user.name),  # a stored name is text, never Rich markup
            "yes" if user.is_admin else "no",
            "yes" if user.disabled else "no",
            f"{user.created:%Y-%m-%d %H:%M}",
        )
    Console().print(table)


@app.command("quota")
@store_command
def quota(
    store_options: StoreOptions,
    name: NameArgument,
    week: Annotated[int | None, typer.Option(min=0, help="activations per rolling week")] = None,
    month: Annotated[
        int | None, typer.Option(min=0, help="activations per rolling 30 days")
    ] = None,
) -> None:
    """Set a user's quota overrides; without --week/--month the host-wide defaults apply."""
    settings = store_options.settings()
    shown = ", ".join(
        f"{label} {value if value is not None else 'default'}"
        for label, value in (("week", week), ("month", month))
    )

    async def action(store: Store) -> None:
        await GatewayStore(store).set_quota(name, week, month)
        await _audit(store, settings, "quota_changed", name, shown)

    _for_existing_user(settings, name, action)
    typer.echo(f"quota of {name}: {shown}")
