"""Gateway: activation windows, audit trail, per-user quota overrides.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Self-contained on purpose, like 0001: later edits to schema.py must not rewrite history.
UTC_TIME = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Add the gateway tables and the quota columns."""
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("quota_week", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("quota_month", sa.Integer(), nullable=True))

    op.create_table(
        "windows",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("username", sa.String(), nullable=False),
        sa.Column("address", sa.String(), nullable=False),
        sa.Column("granted_at", UTC_TIME, nullable=False),
        sa.Column("expires_at", UTC_TIME, nullable=False),
        sa.Column("consumed_at", UTC_TIME, nullable=True),
        sa.Column("consumed_node", sa.String(), nullable=True),
        sa.Column("expired_noted", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_windows"),
    )
    op.create_index(
        "ix_windows_address_consumed_at_expires_at",
        "windows",
        ["address", "consumed_at", "expires_at"],
    )
    op.create_index("ix_windows_username_consumed_at", "windows", ["username", "consumed_at"])
    op.create_index("ix_windows_expires_at", "windows", ["expires_at"])

    op.create_table(
        "audit_events",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("time", UTC_TIME, nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("node", sa.String(), nullable=False),
        sa.Column("username", sa.String(), nullable=True),
        sa.Column("address", sa.String(), nullable=True),
        sa.Column("backend", sa.String(), nullable=True),
        sa.Column("window_id", sa.BigInteger(), nullable=True),
        sa.Column("cmid", sa.Uuid(), nullable=True),
        sa.Column("machine_name", sa.String(), nullable=True),
        sa.Column("product", sa.String(), nullable=True),
        sa.Column("result", sa.String(), nullable=True),
        sa.Column("detail", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    for column in ("username", "address", "kind", "time"):
        op.create_index(f"ix_audit_events_{column}_id", "audit_events", [column, "id"])


def downgrade() -> None:
    """Drop what upgrade added."""
    op.drop_table("audit_events")
    op.drop_table("windows")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("quota_month")
        batch.drop_column("quota_week")
