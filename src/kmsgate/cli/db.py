"""`kmsgate db`: database maintenance."""

from __future__ import annotations

import typer

from kmsgate.cli.common import (
    ConfigOption,
    DataDirOption,
    DbOption,
    fail,
    require_db_folder,
    resolve_settings,
    store_failure,
)
from kmsgate.store import migrate
from kmsgate.store.errors import StoreError


def register(app: typer.Typer) -> None:
    """Add the `db` command group."""
    group = typer.Typer(help="Database maintenance.", no_args_is_help=True)

    @group.command()
    def upgrade(
        config: ConfigOption = None, db: DbOption = None, data_dir: DataDirOption = None
    ) -> None:
        """Apply every pending migration (serve does this on start unless --no-db-upgrade)."""
        settings = resolve_settings(config, db, data_dir)
        require_db_folder(settings)
        try:
            migrate.upgrade(settings.db_url)
        except StoreError as exc:
            raise fail(store_failure(settings.db_url, exc)) from None
        typer.echo(f"database at revision {migrate.head()}")

    app.add_typer(group, name="db")
