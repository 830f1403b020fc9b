"""A lifetime counter of gateway connections refused without a window, from the audit trail.

The dashboard and /api/stats read counters, never the big tables; the audit writer adds to
this one from now on, and this fills in what the trail holds already.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "gateway:refused_connections"


def upgrade() -> None:
    """Sum the counts of the refused-connection audit rows into the counters table."""
    op.execute(
        sa.text(
            "INSERT INTO counters (name, value) "
            "SELECT :name, COALESCE(SUM(count), 0) FROM audit_events "
            "WHERE kind = 'connection_refused' HAVING COUNT(*) > 0"
        ).bindparams(name=NAME)
    )


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM counters WHERE name = :name").bindparams(name=NAME))
