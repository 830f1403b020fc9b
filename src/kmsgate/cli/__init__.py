"""The `kmsgate` command line."""

from __future__ import annotations

import typer

from kmsgate.cli import audit, client, db, dns, products, records, serve, users

app = typer.Typer(
    name="kmsgate",
    help="KMS volume-activation host, strict client and authenticating gateway.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for module in (serve, client, products, records, users, audit, db, dns):
    module.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
