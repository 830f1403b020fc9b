"""Options and helpers shared by the commands that read the store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError

from kmsgate.config import ServeSettings, load_settings
from kmsgate.store.database import Store
from kmsgate.store.engine import masked
from kmsgate.store.errors import StoreError, UserExists, UserNotFound

T = TypeVar("T")

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="TOML config file (as for serve)")
]
DbOption = Annotated[str | None, typer.Option("--db", help="database URL (as for serve)")]
DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="data directory (as for serve)")
]
JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` to stderr and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def resolve_settings(config: Path | None, db: str | None, data_dir: Path | None) -> ServeSettings:
    """The same file < env < CLI resolution as `serve`, for the store options."""
    try:
        return load_settings(config, db=db, data_dir=data_dir)
    except ValidationError as exc:
        raise fail("; ".join(str(e["msg"]) for e in exc.errors()), 2) from None
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc), 2) from None


def with_store(
    settings: ServeSettings, action: Callable[[Store], Awaitable[T]], *, upgrade: bool = True
) -> T:
    """Open the configured store, run `action`, close it; store errors exit with a message."""

    async def run() -> T:
        store = await Store.open(settings.db_url, upgrade=upgrade)
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except (UserExists, UserNotFound):
        raise  # the caller words these
    except StoreError as exc:
        raise fail(f"store {masked(settings.db_url)}: {exc}") from None


def print_json(value: Any) -> None:
    """JSON to stdout; datetimes, UUIDs and paths as strings."""
    typer.echo(json.dumps(value, indent=2, default=str, ensure_ascii=False))
