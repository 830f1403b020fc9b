"""`kmsgate report`: distinct machines per product and month, and machines that stopped renewing."""

from __future__ import annotations

import dataclasses
import sys
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kmsgate.catalog import default_catalog
from kmsgate.cli.common import (
    JsonOption,
    StoreOptions,
    fail,
    print_json,
    store_command,
    with_store,
)
from kmsgate.config.settings import ServeSettings
from kmsgate.store.database import Store
from kmsgate.store.reports import (
    MAX_STALE_DAYS,
    MAX_STALE_LIMIT,
    Month,
    MonthlyReport,
    ReportStore,
    StaleReport,
)
from kmsgate.web.reports import (
    MONTHLY_CSV_COLUMNS,
    STALE_CSV_COLUMNS,
    USERS_CSV_COLUMNS,
    MonthlyReportModel,
    StaleReportModel,
    csv_text,
    monthly_csv_rows,
    stale_csv_row,
    users_csv_rows,
)


def _print_monthly(report: MonthlyReport, by_user: bool) -> None:
    console = Console(width=120)
    if by_user:
        table = Table(
            "user", "product", "machines", title=f"Machines per gateway user, {report.month}"
        )
        for row in report.users:
            table.add_row(row.username, row.product, str(row.machines))
        console.print(table)
        if not report.users:
            typer.echo(f"no gateway activations in {report.month}")
        return
    table = Table(
        "product", "SKU id", "machines", title=f"Distinct machines served, {report.month}"
    )
    for product in report.products:
        table.add_row(product.product, str(product.sku_id or "-"), str(product.machines))
    console.print(table)
    typer.echo(f"{report.machines} distinct machines in {report.month} (all products)")


app = typer.Typer()


@app.command()
@store_command
def report(
    store_options: StoreOptions,
    month: Annotated[
        str | None,
        typer.Option(help="calendar month in UTC, YYYY-MM (default: the current month)"),
    ] = None,
    stale_days: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=MAX_STALE_DAYS,
            help="instead: machines with no request for this many days",
        ),
    ] = None,
    by_user: Annotated[
        bool, typer.Option("--by-user", help="per gateway user and product (CSV, table)")
    ] = False,
    json_output: JsonOption = False,
    csv_output: Annotated[bool, typer.Option("--csv", help="CSV on standard output")] = False,
) -> None:
    """Licence true-up: distinct machines served per product in a month, or stale ones.

    A machine counts once per product however often it renewed; refused requests do not
    count. In gateway mode --by-user attributes machines to the users who logged in.
    """
    if json_output and csv_output:
        raise fail("give --json or --csv, not both", 2)
    if stale_days is not None and (month is not None or by_user):
        raise fail("--stale-days lists machines; it takes no --month or --by-user", 2)
    try:
        chosen = Month.parse(month) if month is not None else Month.containing(datetime.now(UTC))
    except ValueError as exc:
        raise fail(f"--month: {exc}", 2) from None
    settings = store_options.settings()
    if stale_days is not None:
        _stale(settings, stale_days, json_output=json_output, csv_output=csv_output)
        return

    async def monthly(store: Store) -> MonthlyReport:
        return await ReportStore(store, default_catalog()).monthly(chosen)

    result = with_store(settings, monthly)
    if json_output:
        print_json(MonthlyReportModel.from_report(result).model_dump(mode="json"))
    elif csv_output:
        if by_user:
            sys.stdout.write(csv_text(USERS_CSV_COLUMNS, users_csv_rows(result)))
        else:
            sys.stdout.write(csv_text(MONTHLY_CSV_COLUMNS, monthly_csv_rows(result)))
    else:
        _print_monthly(result, by_user)


def _stale(settings: ServeSettings, days: int, *, json_output: bool, csv_output: bool) -> None:
    now = datetime.now(UTC)

    async def every_page(store: Store) -> StaleReport:
        reports = ReportStore(store)
        page = await reports.stale(days=days, now=now, limit=MAX_STALE_LIMIT)
        machines = list(page.machines)
        while page.next_cursor is not None:
            page = await reports.stale(
                days=days, now=now, cursor=page.next_cursor, limit=MAX_STALE_LIMIT
            )
            machines.extend(page.machines)
        return dataclasses.replace(page, machines=machines, next_cursor=None)

    result = with_store(settings, every_page)
    if json_output:
        print_json(StaleReportModel.from_report(result).model_dump(mode="json"))
        return
    if csv_output:
        sys.stdout.write(csv_text(STALE_CSV_COLUMNS, (stale_csv_row(m) for m in result.machines)))
        return
    table = Table("last seen (UTC)", "machine", "product", "last answer", "address", "requests")
    for m in result.machines:
        table.add_row(
            f"{m.last_seen:%Y-%m-%d %H:%M}",
            m.machine_name,
            m.product,
            m.last_result,
            m.last_address,
            str(m.request_count),
        )
    Console(width=120).print(table)
    typer.echo(f"{result.total} machines without a request for {days} days")
