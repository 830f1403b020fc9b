"""SQLite client search: an FTS5 trigram index over client names, SKUs and addresses.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("kmsgate.store")

# Self-contained on purpose, like 0001: later edits to the store must not rewrite history.
# kmsgate.store.search queries clients_search by name; PostgreSQL has trigram GIN indexes.
TRIGGERS = ("clients_search_insert", "clients_search_delete", "clients_search_update")

# External content: the index keeps no copy of the text, it reads clients by rowid. Removing
# a row from such an index needs the old values, hence the 'delete' commands.
_INSERT_NEW = """
    INSERT INTO clients_search (rowid, machine_name, sku_name, last_address)
    VALUES (new.rowid, new.machine_name, new.sku_name, new.last_address);
"""
_DELETE_OLD = """
    INSERT INTO clients_search (clients_search, rowid, machine_name, sku_name, last_address)
    VALUES ('delete', old.rowid, old.machine_name, old.sku_name, old.last_address);
"""
_TRIGGER_SQL = (
    "CREATE TRIGGER clients_search_insert AFTER INSERT ON clients BEGIN" + _INSERT_NEW + "END",
    "CREATE TRIGGER clients_search_delete AFTER DELETE ON clients BEGIN" + _DELETE_OLD + "END",
    # Renewals write last_address (and more) on every request: WHEN spares the index
    # unless searchable text really changed.
    "CREATE TRIGGER clients_search_update"
    " AFTER UPDATE OF machine_name, sku_name, last_address ON clients"
    " WHEN old.machine_name IS NOT new.machine_name OR old.sku_name IS NOT new.sku_name"
    " OR old.last_address IS NOT new.last_address"
    " BEGIN" + _DELETE_OLD + _INSERT_NEW + "END",
)


def upgrade() -> None:
    """On SQLite, index the existing clients and keep the index in step by triggers."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite" or not _create_index(bind):
        return
    for sql in _TRIGGER_SQL:
        op.execute(sql)
    op.execute("INSERT INTO clients_search (clients_search) VALUES ('rebuild')")


def _create_index(bind: sa.Connection, tokenizer: str = "trigram") -> bool:
    """Create the FTS5 table; False (with a warning) when this SQLite lacks FTS5 or trigram."""
    try:
        with bind.begin_nested():  # a refusal must not abort the whole migration
            bind.execute(
                sa.text(
                    "CREATE VIRTUAL TABLE clients_search USING fts5("
                    "machine_name, sku_name, last_address,"
                    " content='clients', content_rowid='rowid',"
                    # Nothing ranks matches: per-row column sizes would be written for nothing.
                    f" tokenize='{tokenizer}', columnsize=0)"
                )
            )
    except sa.exc.OperationalError as exc:
        # The trigram tokenizer needs SQLite 3.34+ built with FTS5.
        log.warning("SQLite FTS5 trigram index unavailable (%s): client search will scan", exc.orig)
        return False
    return True


def downgrade() -> None:
    """Drop the triggers and the index (absent when upgrade skipped them)."""
    if op.get_bind().dialect.name != "sqlite":
        return
    for trigger in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.execute("DROP TABLE IF EXISTS clients_search")
