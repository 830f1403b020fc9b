"""SQLite: machine_months filled by the record writer per batch, not by a row trigger.

The trigger ran a statement per served request, 0.65 µs of the serving core a record on
SQLite, where one node writes alone: the writer now inserts the batch's distinct (month, SKU,
machine) rows in its transaction (store/activation_batch.py). PostgreSQL keeps its
statement-level trigger: nodes of an older version may share that database during a rolling
upgrade, and their activations must still reach the report.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Self-contained on purpose, like 0007: later edits elsewhere must not rewrite history.
TRIGGER = "activations_machine_months"
SQLITE_TRIGGER = """
CREATE TRIGGER activations_machine_months AFTER INSERT ON activations
WHEN new.result = 'activated' AND new.cmid IS NOT NULL AND new.sku_id IS NOT NULL
BEGIN
    INSERT OR IGNORE INTO machine_months (month, sku_id, cmid, sku_name)
    VALUES (substr(new.time, 1, 7), new.sku_id, new.cmid, new.sku_name);
END
"""


def upgrade() -> None:
    """Drop the SQLite row trigger (the writer fills machine_months from now on)."""
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER}")


def downgrade() -> None:
    """Put the SQLite row trigger back."""
    if op.get_bind().dialect.name == "sqlite":
        op.execute(SQLITE_TRIGGER)
