"""Alembic migration environment of the store (loaded by Alembic, not imported)."""
