"""SQL backend on SQLite and a real PostgreSQL: argon2 and bcrypt hashes, binding, errors."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from pydantic import ValidationError

from kmsgate.access.accounts.backends import build_backend
from kmsgate.access.accounts.base import AuthResult, BackendUnavailable, SqlSettings
from kmsgate.access.accounts.sql import SqlBackend, async_url, verify_hash
from kmsgate.auth.passwords import hash_password
from tests.support.account_servers import silent_listener
from tests.support.ports import closed_port
from tests.support.postgres import PostgresServer, running_postgres

pytestmark = pytest.mark.integration

QUERY = "SELECT pw, login FROM accounts WHERE lower(login) = lower(:username) AND active = 1"
LONG_PASSWORD = "L" * 80  # longer than bcrypt's 72 bytes
PASSWORDS = {
    "alice": "Wonderland-1",
    "bob": "pässwörd Bob",
    "carol": "carol-pass",
    "dave": "dave-pass",
    "long": LONG_PASSWORD,
}


def _bcrypt(password: str, prefix: str = "$2b$") -> str:
    # Cost 4 keeps the tests fast; PHP's password_hash writes the $2y$ spelling.
    hashed = bcrypt.hashpw(password.encode()[:72], bcrypt.gensalt(rounds=4)).decode()
    return prefix + hashed[4:]


def _rows() -> list[tuple[str, str | None, int]]:
    """(login, hash, active) rows of the test table."""
    return [
        ("Alice", hash_password(PASSWORDS["alice"]), 1),
        ("bob", _bcrypt(PASSWORDS["bob"]), 1),
        ("carol", _bcrypt(PASSWORDS["carol"], "$2y$"), 1),
        ("dave", "{SSHA}c2hhMSBzYWx0ZWQgaGFzaCBoZXJl", 1),  # a scheme we do not accept
        ("eve", None, 1),
        ("frank", hash_password("frank-pass"), 0),  # filtered out by the query
        ("twin", hash_password("twin-pass"), 1),
        ("Twin", hash_password("twin-pass"), 1),
        ("long", _bcrypt(LONG_PASSWORD), 1),
    ]


@pytest.fixture(scope="module")
def rows() -> list[tuple[str, str | None, int]]:
    """The table contents, hashed once per module (argon2 is slow on purpose)."""
    return _rows()


@pytest.fixture(scope="module")
def pg_url(rows: list[tuple[str, str | None, int]]) -> Iterator[str]:
    """A real PostgreSQL with the accounts table, for the whole module."""
    server: PostgresServer
    with running_postgres() as server:
        url = server.create_database("accounts")
        # Hashes use base64-like alphabets only: no quote can break these literals.
        values = ", ".join(
            f"('{login}', {'NULL' if pw is None else chr(39) + pw + chr(39)}, {active})"
            for login, pw, active in rows
        )
        server.psql(
            "CREATE TABLE accounts (login text NOT NULL, pw text, active integer NOT NULL);"
            f"INSERT INTO accounts VALUES {values}",
            database="accounts",
        )
        yield url


@pytest.fixture(scope="module")
def sqlite_url(
    rows: list[tuple[str, str | None, int]], tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A SQLite file with the same table."""
    path = tmp_path_factory.mktemp("sql") / "accounts.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE accounts (login TEXT NOT NULL, pw TEXT, active INTEGER NOT NULL)")
        db.executemany("INSERT INTO accounts VALUES (?, ?, ?)", rows)
        db.commit()
    return f"sqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest) -> str:
    """The database under test."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))


async def login(config: SqlSettings, username: str, password: str) -> AuthResult:
    """Authenticate once with a fresh backend and check the password is not echoed."""
    backend = build_backend(config)
    try:
        result = await backend.authenticate(username, password)
    finally:
        await backend.close()
    assert result.backend == "sql"
    if password:
        assert password not in result.reason
    return result


# ---------------------------------------------------------------- both databases


@pytest.mark.parametrize(
    ("username", "canonical"),
    [("alice", "Alice"), ("bob", "bob"), ("carol", "carol"), ("  ALICE ", "Alice")],
)
async def test_right_password_is_accepted(url: str, username: str, canonical: str) -> None:
    password = PASSWORDS[username.strip().lower()]
    result = await login(SqlSettings(url=url, query=QUERY), username, password)
    assert result == AuthResult(ok=True, user=canonical, reason="ok", backend="sql")


@pytest.mark.parametrize("username", ["alice", "bob", "carol"])
async def test_wrong_password_is_refused(url: str, username: str) -> None:
    result = await login(SqlSettings(url=url, query=QUERY), username, "not-it")
    assert not result.ok
    assert result.reason == "wrong password"


@pytest.mark.parametrize("username", ["mallory", "frank"])
async def test_unknown_user_is_refused(url: str, username: str) -> None:
    result = await login(SqlSettings(url=url, query=QUERY), username, "frank-pass")
    assert not result.ok
    assert result.reason == "unknown user"


async def test_empty_password_fails(url: str) -> None:
    result = await login(SqlSettings(url=url, query=QUERY), "alice", "")
    assert (result.ok, result.reason) == (False, "empty password")


@pytest.mark.parametrize(
    "username",
    [
        "' OR '1'='1",
        "alice' --",
        "alice'; DROP TABLE accounts; --",
        "*)(uid=*",
        "admin)(|(uid=*",
        "%",
    ],
)
async def test_injection_attempts_fail(url: str, username: str) -> None:
    config = SqlSettings(url=url, query=QUERY)
    result = await login(config, username, "Wonderland-1")
    assert not result.ok
    assert result.reason == "unknown user"
    # The table is still there and alice still logs in.
    assert (await login(config, "alice", "Wonderland-1")).ok


@pytest.mark.parametrize(
    ("username", "reason"),
    [
        ("dave", "unsupported password hash scheme"),
        ("eve", "no password hash stored"),
        ("twin", "ambiguous user: several rows match"),
    ],
)
async def test_unusable_rows_fail(url: str, username: str, reason: str) -> None:
    password = "twin-pass" if username == "twin" else f"{username}-pass"
    result = await login(SqlSettings(url=url, query=QUERY), username, password)
    assert (result.ok, result.reason) == (False, reason)


async def test_bcrypt_compares_the_first_72_bytes_like_its_creators(url: str) -> None:
    config = SqlSettings(url=url, query=QUERY)
    assert (await login(config, "long", LONG_PASSWORD)).ok
    assert not (await login(config, "long", "L" * 71)).ok


async def test_one_backend_serves_many_logins(url: str) -> None:
    backend = SqlBackend(SqlSettings(url=url, query=QUERY))
    try:
        for _ in range(3):
            assert (await backend.authenticate("bob", PASSWORDS["bob"])).ok
            assert not (await backend.authenticate("bob", "nope")).ok
    finally:
        await backend.close()


async def test_broken_query_is_unavailable(url: str) -> None:
    config = SqlSettings(url=url, query="SELECT pw FROM no_such_table WHERE login = :username")
    with pytest.raises(BackendUnavailable):
        await login(config, "alice", "Wonderland-1")


# ---------------------------------------------------------------- unreachable


async def test_closed_port_is_unavailable_quickly() -> None:
    config = SqlSettings(url=f"postgresql://u:dbpass@127.0.0.1:{closed_port()}/x", query=QUERY)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        await login(config, "alice", "Wonderland-1")
    assert time.monotonic() - started < 2
    assert "dbpass" not in str(caught.value)


async def test_silent_server_times_out() -> None:
    with silent_listener() as port:
        config = SqlSettings(url=f"postgresql://u@127.0.0.1:{port}/x", query=QUERY, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await login(config, "alice", "Wonderland-1")
        assert time.monotonic() - started < 3


async def test_unknown_database_is_unavailable(pg_url: str) -> None:
    config = SqlSettings(url=pg_url.rsplit("/", 1)[0] + "/no_such_db", query=QUERY)
    with pytest.raises(BackendUnavailable):
        await login(config, "alice", "Wonderland-1")


async def test_missing_sqlite_table_is_unavailable(tmp_path: Path) -> None:
    config = SqlSettings(url=f"sqlite:///{tmp_path}/empty.db", query=QUERY)
    with pytest.raises(BackendUnavailable):
        await login(config, "alice", "Wonderland-1")


# ---------------------------------------------------------------- pieces


def test_verify_hash_schemes() -> None:
    argon = hash_password("pw-1")
    assert verify_hash(argon, "pw-1") is True
    assert verify_hash(argon, "pw-2") is False
    for prefix in ("$2a$", "$2b$", "$2y$"):
        hashed = _bcrypt("pw-1", prefix)
        assert verify_hash(hashed, "pw-1") is True
        assert verify_hash(hashed, "pw-2") is False
    assert verify_hash("$2b$04$broken", "pw-1") is False
    assert verify_hash("{SHA}abc", "pw-1") is None
    assert verify_hash("pw-1", "pw-1") is None  # plaintext is never compared


def test_async_driver_mapping() -> None:
    assert async_url("sqlite:///x.db").drivername == "sqlite+aiosqlite"
    assert async_url("postgresql://h/db").drivername == "postgresql+asyncpg"
    assert async_url("postgres://h/db").drivername == "postgresql+asyncpg"
    assert async_url("postgresql+psycopg://h/db").drivername == "postgresql+psycopg"


def test_settings_need_a_bound_username_and_hide_the_url() -> None:
    with pytest.raises(ValidationError):
        SqlSettings(url="sqlite:///x", query="SELECT pw FROM a WHERE login = '{user}'")
    config = SqlSettings(url="postgresql://u:s3cret@h/db", query=QUERY)
    assert "s3cret" not in repr(config)
    with pytest.raises(ValueError, match="unusable database URL"):
        SqlBackend(SqlSettings(url="::nonsense::", query=QUERY))
    with pytest.raises(ValueError, match="unusable database URL"):
        SqlBackend(SqlSettings(url="nosuchdb+nodriver://h/db", query=QUERY))
