"""Options and helpers shared by the commands that read the store."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

import typer
from pydantic import BaseModel, ValidationError

from kmsgate.config.explain import explain
from kmsgate.config.loading import load_settings
from kmsgate.config.settings import ServeSettings
from kmsgate.observability.display import json_text
from kmsgate.store.database import Store
from kmsgate.store.engine import create_sqlite_file, masked, translated
from kmsgate.store.errors import StoreError, UserExists, UserNotFound

T = TypeVar("T")
P = ParamSpec("P")

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="TOML config file (as for serve)")
]
DbOption = Annotated[
    str | None,
    typer.Option(
        "--db", help="database file path, sqlite:////ABSOLUTE/PATH or postgresql://... (as serve)"
    ),
]
DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="data directory (as for serve)")
]
JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable output")]
# A socket address inside a driver's message: ('127.0.0.1', 5432) or ('::1', 5432, 0, 0).
SQLITE_HEADER = b"SQLite format 3\x00"
_SOCKADDR = re.compile(r"\('([^']*)', (\d+)(?:, \d+, \d+)?\)")


class MissingDatabaseError(StoreError):
    """A command that only reads found no kmsgate database where the settings point."""


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` to stderr and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def resolve_settings(
    config: Path | None, db: str | None, data_dir: Path | None, **more: Any
) -> ServeSettings:
    """The same file < env < CLI resolution as `serve`, for the store options."""
    try:
        settings = load_settings(config, db=db, data_dir=data_dir, **more)
    except ValidationError as exc:
        raise fail("; ".join(explain(exc, config)), 2) from None
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc), 2) from None
    if settings.db_note:
        typer.echo(f"note: {settings.db_note}", err=True)
    return settings


@dataclass(frozen=True)
class StoreOptions:
    """--config, --db and --data-dir of a command that opens the store."""

    config: Path | None = None
    db: str | None = None
    data_dir: Path | None = None

    def settings(self, **more: Any) -> ServeSettings:
        """The settings these options select (file < env < CLI, as for serve)."""
        return resolve_settings(self.config, self.db, self.data_dir, **more)


_STORE_PARAMETERS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
    for name, annotation in (
        ("config", ConfigOption),
        ("db", DbOption),
        ("data_dir", DataDirOption),
    )
]


def store_command(command: Callable[P, T]) -> Callable[..., T]:
    """Give a command the store options after its own, passed to it as `store_options`.

    The options stay on the command (`kmsgate users list --db X`), declared once here.
    """
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "store_options"]
    if len(own) == len(signature.parameters):
        raise TypeError(f"{command.__name__} needs a `store_options: StoreOptions` parameter")

    @functools.wraps(command)
    def run(
        *args: Any, config: Path | None, db: str | None, data_dir: Path | None, **kwargs: Any
    ) -> T:
        return command(*args, store_options=StoreOptions(config, db, data_dir), **kwargs)  # type: ignore[arg-type]

    # Typer reads the options from the signature; the annotations of `command` no longer apply.
    run.__signature__ = signature.replace(parameters=[*own, *_STORE_PARAMETERS])  # type: ignore[attr-defined]
    run.__annotations__ = {}
    return run


def _endpoint(host: str, port: int | str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def store_target(url: str) -> str:
    """The database a URL names, for messages: `PostgreSQL at HOST:PORT` or `SQLite file`."""
    from kmsgate.config.db_url import sqlite_path

    path = sqlite_path(url)
    if path is not None:
        return f"SQLite database {path}"
    parts = urlsplit(url)
    if parts.scheme.split("+")[0] in ("postgresql", "postgres"):
        try:
            port = parts.port or 5432
        except ValueError:
            port = 5432
        return f"PostgreSQL at {_endpoint(parts.hostname or 'localhost', port)}"
    return masked(url)


def store_failure(url: str, exc: BaseException) -> str:
    """One line saying which database failed and why, without driver internals."""
    target = store_target(url)
    chain: list[BaseException] = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 5:
        chain.append(chain[-1].__cause__)
    text = str(exc)
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "ConnectionRefused" in text:
        return f"cannot reach {target}: connection refused (is the server running there?)"
    if any(isinstance(e, TimeoutError) for e in chain) or text.startswith("TimeoutError"):
        return f"cannot reach {target}: no answer (a firewall, or the wrong host?)"
    text = _SOCKADDR.sub(lambda m: _endpoint(m[1], m[2]), text)
    return f"{target}: {text}"


def require_db_folder(settings: ServeSettings) -> None:
    """Refuse an explicit --db whose folder is missing (a typo would make a stray database)."""
    path = settings.db_path
    if settings.db is not None and path is not None and not path.parent.is_dir():
        raise fail(f"db: the folder {path.parent} does not exist (create it first)", 2)


def with_store(
    settings: ServeSettings,
    action: Callable[[Store], Awaitable[T]],
    *,
    upgrade: bool = True,
    must_exist: bool = False,
) -> T:
    """Open the configured store, run `action`, close it; store errors exit with a message.

    must_exist: the command only reads (or changes what is there), so a missing database is
    an error and is never created, and neither is an empty one's schema.
    """

    async def run() -> T:
        path = settings.db_path
        if must_exist and path is not None:
            if not path.is_file():
                raise MissingDatabaseError(f"no database at {path}")
            # Opening an empty file would make it a database (WAL mode writes a header).
            with path.open("rb") as handle:
                if handle.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                    raise MissingDatabaseError(f"{path} is not a SQLite database")
        if upgrade and not must_exist and path is not None:
            # Connections never create a missing SQLite file; a command that may, does here.
            create_sqlite_file(path)
        store = await Store.open(settings.db_url, upgrade=False)
        try:
            if must_exist or upgrade:
                from kmsgate.store.migrate import current_revision, run_upgrade

                with translated():
                    if must_exist and await current_revision(store.engine) is None:
                        raise MissingDatabaseError(
                            f"{store_target(settings.db_url)} holds no kmsgate data"
                        )
                    if upgrade:
                        await run_upgrade(store.engine)
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except (UserExists, UserNotFound):
        raise  # the caller words these
    except MissingDatabaseError as exc:
        raise fail(
            f"{exc} (nothing recorded yet? `kmsgate serve` creates it; check --db, --data-dir "
            "and --config)"
        ) from None
    except StoreError as exc:
        raise fail(store_failure(settings.db_url, exc)) from None


def print_json(value: Any) -> None:
    """JSON to stdout; datetimes, UUIDs and paths as strings."""
    typer.echo(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def print_model(model: BaseModel) -> None:
    """A response model of the JSON API as the API serialises it (ISO 8601 `...Z` times),
    every non-ASCII character escaped so that stored text cannot act on the terminal."""
    typer.echo(json_text(model.model_dump(mode="json")))
