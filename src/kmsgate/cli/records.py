"""`kmsgate clients` and `kmsgate stats`: the dashboard's figures in the terminal."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kmsgate.cli.common import (
    JsonOption,
    StoreOptions,
    print_model,
    store_command,
    with_store,
)
from kmsgate.observability.display import rich_cell
from kmsgate.protocol.licensing import license_status_name
from kmsgate.store.database import Store
from kmsgate.store.records import ClientRow, Page, Stats

app = typer.Typer()


@app.command()
@store_command
def clients(
    store_options: StoreOptions,
    search: Annotated[
        str | None, typer.Option(help="machine name / SKU substring, address prefix or CMID")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="rows at most")] = 50,
    json_output: JsonOption = False,
) -> None:
    """List recorded clients, most recently seen first."""
    settings = store_options.settings()

    async def action(store: Store) -> Page[ClientRow]:
        return await store.list_clients(search=search, limit=limit)

    page = with_store(settings, action, must_exist=True)
    if json_output:
        from kmsgate.web.api import ClientPage

        print_model(ClientPage.from_page(page))  # exactly what /api/clients answers
        return
    if not page.items:
        typer.echo("no clients recorded" + (f" matching {search!r}" if search else ""))
        raise typer.Exit(1 if search else 0)
    table = Table("last seen (UTC)", "machine", "product", "status", "address", "requests")
    for row in page.items:
        # Machine names and products come from clients: shown literally, never as markup.
        table.add_row(
            f"{row.last_seen:%Y-%m-%d %H:%M:%S}",
            rich_cell(row.machine_name),
            rich_cell(row.sku_name),
            license_status_name(row.license_status or 0),
            rich_cell(row.last_address),
            str(row.request_count),
        )
    Console(width=200).print(table)
    if page.next_cursor:
        typer.echo(f"(first {len(page.items)} shown; use --limit or the dashboard for more)")


@app.command()
@store_command
def stats(
    store_options: StoreOptions,
    json_output: JsonOption = False,
) -> None:
    """Totals, requests per protocol and per product, and the last 24 hours."""
    settings = store_options.settings()

    async def action(store: Store) -> Stats:
        return await store.stats(datetime.now(UTC))

    figures = with_store(settings, action, must_exist=True)
    if json_output:
        from kmsgate.web.api import StatsModel

        print_model(StatsModel.from_stats(figures, settings.node_name))  # as /api/stats
        return
    console = Console(width=120)
    totals = Table("clients", "requests", "refusals", "last request (UTC)")
    last = figures.last_activation
    totals.add_row(
        str(figures.clients),
        str(figures.activations),
        str(figures.refusals),
        f"{last:%Y-%m-%d %H:%M:%S}" if last else "-",
    )
    console.print(totals)
    products = Table("product", "requests")
    for name, count in figures.per_product:
        products.add_row(rich_cell(name), str(count))
    console.print(products)
    protocols = Table("protocol", "requests")
    for version, count in sorted(figures.per_protocol.items()):
        protocols.add_row(f"v{version}", str(count))
    console.print(protocols)
    day = figures.per_hour[-24:]
    console.print(f"last 24 hours: {sum(count for _, count in day)} requests")
