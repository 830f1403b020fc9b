"""Windows are spent by a served activation (spent_at); audit rows can stand for many events.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Self-contained on purpose, like 0001: later edits to schema.py must not rewrite history.
UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Add windows.spent_at and audit_events.count; windows consumed so far count as spent."""
    with op.batch_alter_table("windows") as batch:
        batch.add_column(sa.Column("spent_at", UTC_TIME, nullable=True))
        batch.create_index("ix_windows_username_spent_at", ["username", "spent_at"])
    # Before 0008 a consumed window counted against the quota: keep counting it.
    op.execute("UPDATE windows SET spent_at = consumed_at WHERE consumed_at IS NOT NULL")
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(
            sa.Column("count", sa.Integer(), server_default=sa.text("1"), nullable=False)
        )


def downgrade() -> None:
    """Drop what upgrade added."""
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("count")
    with op.batch_alter_table("windows") as batch:
        batch.drop_index("ix_windows_username_spent_at")
        batch.drop_column("spent_at")
