"""Alembic environment: migrates on the connection kmsgate.store.migrate hands over."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from kmsgate.store.schema import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things: later migrations copy-and-move tables instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        # kmsgate.store.migrate opens the transaction itself (BEGIN IMMEDIATE on SQLite).
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_from_url(url: str) -> None:
    from kmsgate.store.engine import make_engine

    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run)
    finally:
        await engine.dispose()


def run() -> None:
    """Online migrations only: kmsgate never emits SQL scripts offline."""
    if context.is_offline_mode():
        raise RuntimeError("offline (--sql) migrations are not supported")
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    # Plain `alembic -x` use with sqlalchemy.url set: open our own engine.
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection and no sqlalchemy.url to migrate")
    asyncio.run(_run_from_url(url))


run()
