"""Persistence: SQLAlchemy Core schema, migrations and repositories over SQLite or PostgreSQL."""
