"""Alembic migrations driven from code: no alembic.ini, scripts shipped inside the package."""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from kmsgate.store.errors import StoreError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# pg_advisory_xact_lock key: nodes starting together upgrade one after the other.
ADVISORY_LOCK_KEY = 0x6B6D7367_61746531  # "kmsgate1"


def alembic_config() -> Config:
    """An Alembic Config pointing at the packaged migration scripts."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head() -> str:
    """The newest revision the code knows."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


def _run_command(conn: Connection, name: str, revision: str) -> None:
    cfg = alembic_config()
    # env.py migrates on this connection, inside our (locked) transaction.
    cfg.attributes["connection"] = conn
    getattr(command, name)(cfg, revision)


async def _locked(conn: AsyncConnection) -> None:
    """Serialise schema changes between nodes for the rest of this transaction."""
    if conn.dialect.name == "postgresql":
        await conn.execute(select(func.pg_advisory_xact_lock(ADVISORY_LOCK_KEY)))


_loop_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _process_lock() -> asyncio.Lock:
    """Alembic keeps its running context in module globals: one migration per process at a
    time, or two Stores opening concurrently would run inside each other's context."""
    loop = asyncio.get_running_loop()
    lock = _loop_locks.get(loop)
    if lock is None:
        lock = _loop_locks[loop] = asyncio.Lock()
    return lock


async def _migrate(engine: AsyncEngine, name: str, revision: str) -> None:
    async with _process_lock(), engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            # Take SQLite's write lock at BEGIN, so concurrent upgrades queue (busy_timeout).
            await conn.execution_options(kmsgate_write=True)
        async with conn.begin():
            await _locked(conn)
            try:
                await conn.run_sync(_run_command, name, revision)
            except CommandError as exc:
                # Typically a database migrated by a newer kmsgate than this one.
                raise StoreError(f"cannot {name} the database schema: {exc}") from exc


async def run_upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade to `revision` in one transaction; idempotent, safe for nodes starting at once."""
    await _migrate(engine, "upgrade", revision)


async def run_downgrade(engine: AsyncEngine, revision: str) -> None:
    """Downgrade to `revision` ("base" drops everything)."""
    await _migrate(engine, "downgrade", revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, None when unversioned."""
    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )


async def _with_engine(url: str, name: str, revision: str) -> None:
    from kmsgate.store.engine import make_engine, translated

    engine = make_engine(url)
    try:
        with translated():
            await _migrate(engine, name, revision)
    finally:
        await engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Synchronous upgrade for `kmsgate db upgrade`; raises StoreError/StoreUnavailable."""
    asyncio.run(_with_engine(url, "upgrade", revision))


def downgrade(url: str, revision: str) -> None:
    """Synchronous downgrade for `kmsgate db downgrade`."""
    asyncio.run(_with_engine(url, "downgrade", revision))
