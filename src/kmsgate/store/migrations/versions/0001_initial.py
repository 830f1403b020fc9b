"""Initial schema: clients, activations, counters, hourly buckets, product counts, users.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("kmsgate.store")

# Self-contained on purpose: later edits to schema.py must not rewrite history.
# Times: TIMESTAMPTZ on PostgreSQL; on SQLite, DATETIME text "YYYY-MM-DD HH:MM:SS.ffffff"
# in UTC, written by SQLAlchemy in one fixed-width format so it sorts as it compares.
UTC_TIME = sa.DateTime(timezone=True)
# SQLite only auto-numbers an INTEGER PRIMARY KEY (the rowid alias), not BIGINT.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
SEARCH_COLUMNS = ("machine_name", "sku_name", "last_address")
CLIENT_SORT_KEYS = ("last_seen", "first_seen", "machine_name", "sku_name", "request_count")


def upgrade() -> None:
    """Create every table and index."""
    op.create_table(
        "clients",
        sa.Column("cmid", sa.Uuid(), nullable=False),
        sa.Column("machine_name", sa.String(), nullable=False),
        sa.Column("application_id", sa.Uuid(), nullable=True),
        sa.Column("sku_id", sa.Uuid(), nullable=True),
        sa.Column("sku_name", sa.String(), nullable=False),
        sa.Column("kms_id", sa.Uuid(), nullable=True),
        sa.Column("license_status", sa.Integer(), nullable=True),
        sa.Column("first_seen", UTC_TIME, nullable=False),
        sa.Column("last_seen", UTC_TIME, nullable=False),
        sa.Column("request_count", sa.BigInteger(), nullable=False),
        sa.Column("last_epid", sa.String(), nullable=True),
        sa.Column("last_address", sa.String(), nullable=False),
        sa.Column("last_protocol", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("cmid", name="pk_clients"),
    )
    for key in CLIENT_SORT_KEYS:
        op.create_index(f"ix_clients_{key}_cmid", "clients", [key, "cmid"])

    op.create_table(
        "activations",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("time", UTC_TIME, nullable=False),
        sa.Column("cmid", sa.Uuid(), nullable=True),
        sa.Column("machine_name", sa.String(), nullable=False),
        sa.Column("address", sa.String(), nullable=False),
        sa.Column("sku_id", sa.Uuid(), nullable=True),
        sa.Column("sku_name", sa.String(), nullable=False),
        sa.Column("license_status", sa.Integer(), nullable=True),
        sa.Column("protocol", sa.Integer(), nullable=True),
        sa.Column("result", sa.String(), nullable=False),
        sa.Column("hresult", sa.BigInteger(), nullable=False),
        sa.Column("node", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_activations"),
    )
    op.create_index("ix_activations_cmid_id", "activations", ["cmid", "id"])
    op.create_index("ix_activations_time_id", "activations", ["time", "id"])
    op.create_index("ix_activations_result_time_id", "activations", ["result", "time", "id"])

    op.create_table(
        "counters",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_counters"),
    )
    op.create_table(
        "activation_hours",
        sa.Column("hour", UTC_TIME, nullable=False),
        sa.Column("node", sa.String(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("hour", "node", name="pk_activation_hours"),
    )
    op.create_table(
        "product_counts",
        sa.Column("family", sa.String(), nullable=False),
        sa.Column("sku_name", sa.String(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("family", "sku_name", name="pk_product_counts"),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("password_hash", sa.String(), nullable=False),
        sa.Column("is_admin", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created", UTC_TIME, nullable=False),
        sa.Column("disabled", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("name", name="uq_users_name"),
    )

    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # Every flush rewrites the few counter rows: leave room for HOT updates in place.
        op.execute("ALTER TABLE counters SET (fillfactor = 50)")
        if _trigram_extension(bind):
            # Substring search (ILIKE '%x%') over a million clients: trigram indexes let the
            # planner combine the three columns in a bitmap instead of scanning the table.
            for column in SEARCH_COLUMNS:
                op.execute(
                    f"CREATE INDEX ix_clients_{column}_trgm ON clients "
                    f"USING gin ({column} gin_trgm_ops)"
                )


def _trigram_extension(bind: sa.Connection) -> bool:
    """Enable pg_trgm when the server has it and we may; search just scans without it."""
    available = bind.execute(
        sa.text("SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_trgm'")
    ).scalar()
    if not available:
        log.warning("pg_trgm is not installed: client search will scan the clients table")
        return False
    try:
        with bind.begin_nested():  # a refusal must not abort the whole migration
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except sa.exc.DBAPIError as exc:
        log.warning("cannot create extension pg_trgm (%s): client search will scan", exc.orig)
        return False
    return True


def downgrade() -> None:
    """Drop everything (kmsgate db downgrade base)."""
    for table in ("users", "product_counts", "activation_hours", "counters"):
        op.drop_table(table)
    op.drop_index("ix_activations_result_time_id", table_name="activations")
    op.drop_index("ix_activations_time_id", table_name="activations")
    op.drop_index("ix_activations_cmid_id", table_name="activations")
    op.drop_table("activations")
    for key in CLIENT_SORT_KEYS:
        op.drop_index(f"ix_clients_{key}_cmid", table_name="clients")
    # The trigram indexes (PostgreSQL only) go with the table; pg_trgm stays installed,
    # as other databases on the server may use it.
    op.drop_table("clients")
