"""Store fixtures: every store test runs against SQLite and a real PostgreSQL server."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from kmsgate.store import migrate
from kmsgate.store.database import Store
from kmsgate.store.schema import metadata
from tests.support.postgres import PostgresServer, require_bindir

# PostgreSQL runs a real server: those cases belong to the integration tests.
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]
_names = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session (started only if a test needs it)."""
    server = PostgresServer(require_bindir())
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def pg_database(pg_server: PostgresServer) -> str:
    """URL of one migrated database shared by the session; tests empty it first."""
    url = pg_server.create_database("kmsgate_test")
    migrate.upgrade(url)
    return url


def empty_tables(server: PostgresServer, database: str) -> None:
    """Empty every store table: much faster than CREATE DATABASE (or TRUNCATE) per test."""
    server.psql(
        "; ".join(f"DELETE FROM {table.name}" for table in metadata.sorted_tables),
        database=database,
    )


def fresh_pg_database(server: PostgresServer) -> str:
    """A new, empty, uniquely named database on the session server; returns its URL."""
    return server.create_database(f"t{next(_names)}")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Which database the test runs on."""
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """URL of an empty, already migrated database of the chosen backend."""
    if backend == "sqlite":
        # A missing parent folder: Store.open must create it.
        return f"sqlite:///{tmp_path}/data/kmsgate.db"
    server: PostgresServer = request.getfixturevalue("pg_server")
    url: str = request.getfixturevalue("pg_database")
    empty_tables(server, make_url(url).database or "")
    return url


@pytest.fixture
def empty_db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """URL of a database with no schema at all."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/empty/kmsgate.db"
    return fresh_pg_database(request.getfixturevalue("pg_server"))


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    """An open Store on a fresh database."""
    opened = await Store.open(db_url)
    try:
        yield opened
    finally:
        await opened.close()
