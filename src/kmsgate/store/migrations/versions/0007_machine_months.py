"""Licence reports: machine_months, each served machine once per UTC month and SKU.

A trigger on activations keeps it filled, in the writing transaction: a row per statement
on PostgreSQL (a statement-level trigger over the inserted rows, in key order so that nodes
writing at once lock in one order), a row per served request on SQLite. Existing
activations are folded in once, here.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Self-contained on purpose, like 0001: later edits to schema.py must not rewrite history.
TRIGGER = "activations_machine_months"
PG_FUNCTION = "kmsgate_machine_months"
SERVED = "result = 'activated' AND cmid IS NOT NULL AND sku_id IS NOT NULL"

# SQLite stores times as naive UTC text 'YYYY-MM-DD HH:MM:SS.ffffff': the month is a prefix.
SQLITE_TRIGGER = """
CREATE TRIGGER activations_machine_months AFTER INSERT ON activations
WHEN new.result = 'activated' AND new.cmid IS NOT NULL AND new.sku_id IS NOT NULL
BEGIN
    INSERT OR IGNORE INTO machine_months (month, sku_id, cmid, sku_name)
    VALUES (substr(new.time, 1, 7), new.sku_id, new.cmid, new.sku_name);
END
"""
SQLITE_BACKFILL = """
INSERT OR IGNORE INTO machine_months (month, sku_id, cmid, sku_name)
SELECT substr(time, 1, 7), sku_id, cmid, sku_name FROM activations
WHERE result = 'activated' AND cmid IS NOT NULL AND sku_id IS NOT NULL
ORDER BY id
"""

PG_SELECT = """
SELECT DISTINCT ON (1, 2, 3)
       to_char(time AT TIME ZONE 'UTC', 'YYYY-MM'), sku_id, cmid, sku_name
FROM {source} WHERE {served}
ORDER BY 1, 2, 3, time
"""
PG_FUNCTION_SQL = f"""
CREATE FUNCTION {PG_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO machine_months (month, sku_id, cmid, sku_name)
    {PG_SELECT.format(source="inserted", served=SERVED)}
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$
"""
PG_TRIGGER_SQL = (
    f"CREATE TRIGGER {TRIGGER} AFTER INSERT ON activations REFERENCING NEW TABLE AS inserted "
    f"FOR EACH STATEMENT EXECUTE FUNCTION {PG_FUNCTION}()"
)
PG_BACKFILL = (
    "INSERT INTO machine_months (month, sku_id, cmid, sku_name) "
    + PG_SELECT.format(source="activations", served=SERVED)
    + " ON CONFLICT DO NOTHING"
)


def upgrade() -> None:
    """Create machine_months, its trigger, and fold in the activations stored so far."""
    op.create_table(
        "machine_months",
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("sku_id", sa.Uuid(), nullable=False),
        sa.Column("cmid", sa.Uuid(), nullable=False),
        sa.Column("sku_name", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("month", "sku_id", "cmid", name="pk_machine_months"),
        sqlite_with_rowid=False,
    )
    if op.get_bind().dialect.name == "sqlite":
        op.execute(SQLITE_TRIGGER)
        op.execute(SQLITE_BACKFILL)
    else:
        op.execute(PG_FUNCTION_SQL)
        op.execute(PG_TRIGGER_SQL)
        op.execute(PG_BACKFILL)


def downgrade() -> None:
    """Drop the trigger (and its function) and the table."""
    op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER}" + ("" if _sqlite() else " ON activations"))
    if not _sqlite():
        op.execute(f"DROP FUNCTION IF EXISTS {PG_FUNCTION}()")
    op.drop_table("machine_months")


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"
