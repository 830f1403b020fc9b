"""`kmsgate audit`: the gateway's audit trail in the terminal, as JSON or CSV."""

from __future__ import annotations

import csv
import sys
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kmsgate.access.audit_csv import CSV_COLUMNS, csv_row
from kmsgate.cli.common import (
    JsonOption,
    StoreOptions,
    fail,
    print_model,
    store_command,
    with_store,
)
from kmsgate.observability.display import rich_cell, shown
from kmsgate.store.audit import AUDIT_KINDS, AuditEvent
from kmsgate.store.database import Store
from kmsgate.store.gateway import GatewayStore
from kmsgate.store.records import Page


def _parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise fail(f"--since {text!r} is not an ISO 8601 date or time", 2) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


app = typer.Typer()


@app.command()
@store_command
def audit(
    store_options: StoreOptions,
    user: Annotated[str | None, typer.Option(help="only this user")] = None,
    address: Annotated[str | None, typer.Option(help="only this client address")] = None,
    kind: Annotated[str | None, typer.Option(help=f"one of {', '.join(AUDIT_KINDS)}")] = None,
    since: Annotated[str | None, typer.Option(help="from this time (ISO 8601, UTC)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="events at most")] = 100,
    json_output: JsonOption = False,
    csv_output: Annotated[bool, typer.Option("--csv", help="CSV on standard output")] = False,
) -> None:
    """Logins, windows and activations, newest first, linked by user, address and CMID."""
    if kind is not None and kind not in AUDIT_KINDS:
        raise fail(f"--kind must be one of {', '.join(AUDIT_KINDS)}", 2)
    start = _parse_time(since)
    settings = store_options.settings()

    async def action(store: Store) -> Page[AuditEvent]:
        return await GatewayStore(store).list_audit(
            username=user, address=address, kind=kind, since=start, limit=limit
        )

    page = with_store(settings, action, must_exist=True)
    events = page.items
    if json_output:
        from kmsgate.web.audit import AuditEventModel, AuditPage

        # Exactly what /api/audit answers for the same filters.
        items = [AuditEventModel.from_event(event) for event in events]
        print_model(AuditPage(items=items, next_cursor=page.next_cursor))
        return
    if csv_output:
        writer = csv.writer(sys.stdout)
        writer.writerow(CSV_COLUMNS)
        # Exact cells for a file or a pipe; a terminal gets the escaped, harmless form.
        raw = not sys.stdout.isatty()
        for event in events:
            cells = csv_row(event)
            writer.writerow(cells if raw else [shown(cell) for cell in cells])
        return
    table = Table("time (UTC)", "event", "user", "address", "machine", "product", "detail")
    for e in events:
        # User names (failed logins too), machine names and details are attacker-chosen.
        table.add_row(
            f"{e.time:%Y-%m-%d %H:%M:%S}",
            rich_cell(e.kind),
            rich_cell(e.username),
            rich_cell(e.address),
            rich_cell(e.machine_name),
            rich_cell(e.product),
            rich_cell(e.detail or e.result),
        )
    Console(width=200).print(table)
