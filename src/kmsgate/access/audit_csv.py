"""The audit trail as CSV, safe to open in a spreadsheet (shared by the web export and the CLI)."""

from __future__ import annotations

from datetime import UTC, datetime

from kmsgate.store.gateway import AuditEvent

CSV_COLUMNS = (
    "id",
    "time",
    "kind",
    "node",
    "username",
    "address",
    "backend",
    "window_id",
    "cmid",
    "machine_name",
    "product",
    "result",
    "detail",
)
# A spreadsheet runs a cell starting with these as a formula (OWASP "CSV injection").
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> str:
    """A CSV cell: ISO times in UTC, empty for None, and a quote before formula-like text."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        text = aware.isoformat().replace("+00:00", "Z")
    else:
        text = str(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def csv_row(event: AuditEvent) -> list[str]:
    """The CSV cells of one event, in CSV_COLUMNS order."""
    return [csv_cell(getattr(event, column)) for column in CSV_COLUMNS]
