"""Alembic revision scripts, one schema step each."""
