"""`kmsgate products`: list and search the KMS products (SKUs) in the catalogue."""

from __future__ import annotations

import datetime
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from kmsgate.catalog import Catalog, Sku, default_catalog
from kmsgate.catalog.loading import catalog_from_file


def sorted_skus(catalog: Catalog, skus: Iterable[Sku]) -> list[Sku]:
    """SKUs ordered by application name, then SKU name (case-insensitive)."""

    def key(sku: Sku) -> tuple[str, str]:
        app = catalog.application(sku.application_id)
        return (app.name.casefold() if app else "", sku.name.casefold())

    return sorted(skus, key=key)


def sku_record(catalog: Catalog, sku: Sku) -> dict[str, Any]:
    """All fields of a SKU, plus the names of its KMS id and application, as JSON values."""
    kms = catalog.kms_id(sku.kms_id)
    app = catalog.application(sku.application_id)
    return {
        "id": str(sku.id),
        "name": sku.name,
        "kms_id": str(sku.kms_id),
        "kms_id_name": kms.name if kms else None,
        "application_id": str(sku.application_id),
        "application_name": app.name if app else None,
        "gvlk": sku.gvlk,
        "gvlk_is_generated": sku.gvlk_is_generated,
        "default_protocol": sku.default_protocol,
        "n_count_policy": sku.n_count_policy,
        "is_retail": kms.is_retail if kms else None,
        "is_preview": kms.is_preview if kms else None,
    }


def products_table(catalog: Catalog, skus: list[Sku], title: str) -> Table:
    """A Rich table of SKUs, one section per application; preview products dimmed."""
    # Light box and no edge padding: six columns of ids and keys fit better in a terminal.
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    # Ids and keys are copied: they never wrap (a narrow terminal gets product_records).
    table.add_column("Name", overflow="fold")
    table.add_column("SKU id", no_wrap=True)
    table.add_column("KMS id", overflow="fold")
    table.add_column("Protocol", justify="center", no_wrap=True)
    table.add_column("N-count", justify="right", no_wrap=True)
    table.add_column("GVLK", no_wrap=True)
    for i, sku in enumerate(skus):
        kms = catalog.kms_id(sku.kms_id)
        # A line between applications makes the Windows / Office groups easy to scan.
        last_of_app = i + 1 == len(skus) or skus[i + 1].application_id != sku.application_id
        table.add_row(
            sku.name,
            str(sku.id),
            kms.name if kms else str(sku.kms_id),
            f"v{sku.default_protocol}",
            str(sku.n_count_policy),
            sku.gvlk or "-",
            style="dim" if kms is None or kms.is_preview or kms.is_placeholder else None,
            end_section=last_of_app,
        )
    return table


CatalogOption = Annotated[
    Path | None,
    typer.Option("--catalog", help="Catalogue file to use instead of the built-in one."),
]


def _catalog(path: Path | None) -> Catalog:
    if path is None:
        return default_catalog()
    try:
        return catalog_from_file(path)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _fits_whole(table: Table, skus: list[Sku], width: int) -> bool:
    """Whether the table, at this width, shows every SKU id and GVLK whole on one line."""
    plain = Console(width=width, color_system=None, highlight=False, file=io.StringIO())
    with plain.capture() as capture:
        plain.print(table)
    lines = capture.get().splitlines()
    wanted = {str(s.id) for s in skus} | {s.gvlk for s in skus if s.gvlk}
    found = {key for line in lines for key in wanted if key in line}
    return found == wanted


def print_records(console: Console, catalog: Catalog, skus: list[Sku], title: str) -> None:
    """One block per SKU, a field per line: for terminals too narrow for the table."""
    console.print(title, style="bold", highlight=False, markup=False)
    application = None
    for sku in skus:
        if sku.application_id != application:
            application = sku.application_id
            app = catalog.application(sku.application_id)
            console.rule(Text(app.name if app else str(sku.application_id)), align="left")
        kms = catalog.kms_id(sku.kms_id)
        style = "dim" if kms is None or kms.is_preview or kms.is_placeholder else None
        console.print(sku.name, style=style or "bold", highlight=False, markup=False)
        fields = (
            ("SKU id", str(sku.id)),
            ("KMS id", kms.name if kms else str(sku.kms_id)),
            ("protocol", f"v{sku.default_protocol}, N-count {sku.n_count_policy}"),
            ("GVLK", sku.gvlk or "-"),
        )
        for label, value in fields:
            # soft_wrap: Rich inserts no line break, so a key stays one string when copied.
            console.print(
                f"  {label:<9} {value}", style=style, highlight=False, markup=False, soft_wrap=True
            )


def products_command(
    ctx: typer.Context,
    search: Annotated[
        str | None,
        typer.Option(
            "--search",
            "-s",
            metavar="TEXT",
            help="Only SKUs whose name, GVLK, SKU id or KMS id contains TEXT (any case).",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON array of all fields instead of a table.")
    ] = False,
    catalog_file: CatalogOption = None,
) -> None:
    """List the KMS products (SKUs) kmsgate knows, with KMS id, protocol, N-count and GVLK."""
    if ctx.invoked_subcommand is not None:
        return
    catalog = _catalog(catalog_file)
    found = catalog.search(search) if search is not None else list(catalog.skus)
    skus = sorted_skus(catalog, found)
    if as_json:
        # Still a valid (empty) array on no match, so `| jq` pipelines do not choke.
        typer.echo(json.dumps([sku_record(catalog, s) for s in skus], indent=2))
    if not skus:
        what = f"matches {search!r}" if search is not None else "is in the catalogue"
        typer.echo(
            f"No product {what}. Search by part of a name, a GVLK or a GUID; "
            "`kmsgate products` lists them all.",
            err=True,
        )
        raise typer.Exit(code=1)
    if as_json:
        return
    title = f"{len(skus)} KMS products" + (f" matching {search!r}" if search is not None else "")
    table = products_table(catalog, skus, title)
    console = Console()
    if not console.is_terminal:
        # Piped output has no width to fit; print full rows so grep and diff see whole lines.
        wide = console.options.update_width(10_000)
        console.width = max(console.width, Measurement.get(console, wide, table).maximum)
    elif not _fits_whole(table, skus, console.width):
        print_records(console, catalog, skus, title)
        return
    console.print(table)


def import_command(
    source: Annotated[Path, typer.Argument(help="py-kms KmsDataBase.xml or vlmcsd .kmd file")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Catalogue file to write (for --catalog).")
    ],
    fmt: Annotated[
        str, typer.Option("--format", help="pykms, vlmcsd or auto (by the file's content).")
    ] = "auto",
    catalog_file: CatalogOption = None,
) -> None:
    """Merge a peer's product file into a catalogue file that `serve --catalog` loads."""
    from kmsgate.catalog.foreign import ForeignFileError
    from kmsgate.catalog.interchange import dump, load_document, merge, read_foreign

    try:
        foreign = read_foreign(source.read_bytes(), fmt)
        doc, report = merge(load_document(catalog_file), foreign, today=datetime.date.today())
    except (OSError, ForeignFileError) as exc:
        typer.echo(f"error: {source}: {exc}", err=True)
        raise typer.Exit(2) from None
    output.write_text(dump(doc), encoding="ascii")
    added = ", ".join(f"{n} {table}" for table, n in sorted(report.added.items())) or "nothing"
    typer.echo(f"{output}: added {added} from {foreign.source}")
    for note in report.notes:
        typer.echo(f"  note: {note}")


app = typer.Typer(
    name="products",
    invoke_without_command=True,
    help="List and search the KMS products; import newer ones from py-kms or vlmcsd data.",
)
app.callback()(products_command)
app.command("import")(import_command)
