"""The newest schema revision, and whether a database is at it, without importing Alembic.

Alembic (with Mako) costs a node about 6 MiB that stays after a migration: a database already
at the newest revision, every start but the first after an upgrade, needs none of it.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

# The newest migration in migrations/versions (test_migrations holds it to Alembic's head).
HEAD_REVISION = "0012"


async def at_head(engine: AsyncEngine) -> bool:
    """Whether the database's recorded revision is HEAD_REVISION (False if unversioned)."""
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
    except DBAPIError:  # no version table yet: a new database
        return False
    return [row[0] for row in rows] == [HEAD_REVISION]
