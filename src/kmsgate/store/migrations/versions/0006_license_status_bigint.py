"""License statuses are unsigned 32-bit: BIGINT on PostgreSQL, whose INTEGER stops at 2^31-1.

A client chooses its license status freely (genuine ones send 0-6); a larger value made
PostgreSQL refuse the whole batch of records it was in. SQLite's INTEGER already holds it.
On PostgreSQL the column type change rewrites both tables once.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("activations", "clients")
INT32_MAX = 2**31 - 1


def upgrade() -> None:
    """Widen license_status on PostgreSQL."""
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.alter_column(table, "license_status", type_=sa.BigInteger(), existing_type=sa.Integer())


def downgrade() -> None:
    """Back to INTEGER; statuses it cannot hold become NULL (unknown)."""
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.alter_column(
            table,
            "license_status",
            type_=sa.Integer(),
            existing_type=sa.BigInteger(),
            postgresql_using=(
                f"CASE WHEN license_status > {INT32_MAX} THEN NULL ELSE license_status END"
            ),
        )
