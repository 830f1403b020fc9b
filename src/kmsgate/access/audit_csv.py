"""The audit trail as CSV, safe to open in a spreadsheet (shared by the web export and the CLI)."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime

from kmsgate.store.audit import AuditEvent

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
FORMULA_PREFIXES = ("=", "+", "-", "@")


def formula_like(text: str) -> bool:
    """Whether a spreadsheet could read text as a formula, or trim its way to one.

    Besides `= + - @`, that is any character they are compatibility forms of (full-width
    U+FF1D, small U+FE62 ...: some spreadsheets fold them), and any leading whitespace or
    control character (TAB, CR, LF, NUL, a space), which spreadsheets skip or split on.
    """
    if not text:
        return False
    first = text[0]
    if first.isspace() or unicodedata.category(first) in ("Cc", "Cf", "Zs", "Zl", "Zp"):
        return True
    return unicodedata.normalize("NFKC", first).startswith(FORMULA_PREFIXES)


def csv_cell(value: object) -> str:
    """A CSV cell: ISO times in UTC, empty for None, a quote before formula-like text.

    NUL characters, which end a string in many readers, become the text `\\x00`.
    """
    if value is None:
        return ""
    if isinstance(value, datetime):
        aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        text = aware.isoformat().replace("+00:00", "Z")
    else:
        text = str(value)
    quote = "'" if formula_like(text) else ""
    return quote + text.replace("\0", "\\x00")


def csv_row(event: AuditEvent) -> list[str]:
    """The CSV cells of one event, in CSV_COLUMNS order."""
    return [csv_cell(getattr(event, column)) for column in CSV_COLUMNS]
