"""Refusals get a partial index: activations no longer pay an index entry each.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Self-contained on purpose, like 0001: later edits to schema.py must not rewrite history.
REFUSED = sa.text("result = 'refused'")


def upgrade() -> None:
    """Replace the (result, time, id) index by one over refusals only."""
    op.drop_index("ix_activations_result_time_id", table_name="activations")
    op.create_index(
        "ix_activations_refused_time_id",
        "activations",
        ["time", "id"],
        sqlite_where=REFUSED,
        postgresql_where=REFUSED,
    )


def downgrade() -> None:
    """Back to the full (result, time, id) index."""
    op.drop_index("ix_activations_refused_time_id", table_name="activations")
    op.create_index("ix_activations_result_time_id", "activations", ["result", "time", "id"])
