"""The machines a host has seen lately, per client counter, for the genuine client count.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Self-contained on purpose, like 0001: later edits to schema.py must not rewrite history.
UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    """One row per (counter, machine) with the last time it asked."""
    op.create_table(
        "seen_machines",
        sa.Column("counter", sa.String(), nullable=False),
        sa.Column("cmid", sa.Uuid(), nullable=False),
        sa.Column("last_seen", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("counter", "cmid", name="pk_seen_machines"),
    )
    op.create_index("ix_seen_machines_counter_last_seen", "seen_machines", ["counter", "last_seen"])
    op.create_index("ix_seen_machines_last_seen", "seen_machines", ["last_seen"])


def downgrade() -> None:
    op.drop_index("ix_seen_machines_last_seen", table_name="seen_machines")
    op.drop_index("ix_seen_machines_counter_last_seen", table_name="seen_machines")
    op.drop_table("seen_machines")
