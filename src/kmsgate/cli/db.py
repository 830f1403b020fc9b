"""`kmsgate db`: database maintenance."""

from __future__ import annotations

import typer

from kmsgate.cli.common import (
    StoreOptions,
    fail,
    require_db_folder,
    store_command,
    store_failure,
)
from kmsgate.store import migrate
from kmsgate.store.errors import StoreError

app = typer.Typer(name="db", help="Database maintenance.", no_args_is_help=True)


@app.command()
@store_command
def upgrade(store_options: StoreOptions) -> None:
    """Apply every pending migration (serve does this on start unless --no-db-upgrade)."""
    settings = store_options.settings()
    require_db_folder(settings)
    try:
        migrate.upgrade(settings.db_url)
    except StoreError as exc:
        raise fail(store_failure(settings.db_url, exc)) from None
    typer.echo(f"database at revision {migrate.head()}")
