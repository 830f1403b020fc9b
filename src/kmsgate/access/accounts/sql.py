"""SQL accounts: an administrator's query returns the stored hash (argon2 or bcrypt)."""

# The query runs against an *external* account database, so it is the one SQL statement
# outside store/: it is configuration, executed with :username bound, never formatted.
from __future__ import annotations

import asyncio
import logging
from typing import Any

import bcrypt
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from kmsgate.access.accounts.base import (
    AuthResult,
    BackendUnavailable,
    SqlSettings,
    dummy_verify,
    normalize_username,
    precheck,
)
from kmsgate.auth.passwords import verify_password

log = logging.getLogger("kmsgate.access.accounts.sql")

# Plain URLs get the asyncio driver the store uses; an explicit "+driver" is kept as given.
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "mysql": "mysql+aiomysql",
    "mariadb": "mariadb+aiomysql",
}
_DRIVER_MODULES = frozenset({"asyncpg", "aiosqlite", "sqlite3", "aiomysql", "asyncmy", "pymysql"})
# bcrypt reads at most 72 bytes; PHP, Ruby and older pyca/bcrypt cut the rest silently when
# they made the hash, and bcrypt 5 refuses longer input, so cut it the same way here.
BCRYPT_MAX_BYTES = 72
BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
ARGON2_PREFIX = "$argon2"


def async_url(url: str) -> URL:
    """Parse the URL and pick an asyncio driver for plain sqlite/postgresql/mysql URLs."""
    parsed = make_url(url)
    if "+" in parsed.drivername:
        return parsed
    return parsed.set(drivername=_ASYNC_DRIVERS.get(parsed.drivername, parsed.drivername))


def verify_hash(stored: str, password: str) -> bool | None:
    """True/False for an argon2 or bcrypt hash; None when the scheme is not supported."""
    if stored.startswith(ARGON2_PREFIX):
        return verify_password(stored, password)
    if stored.startswith(BCRYPT_PREFIXES):
        try:
            return bcrypt.checkpw(password.encode()[:BCRYPT_MAX_BYTES], stored.encode("ascii"))
        except (ValueError, UnicodeEncodeError):  # malformed hash
            return False
    return None


class SqlBackend:
    """Runs the configured query with :username and verifies the returned hash."""

    name: str = "sql"

    def __init__(self, settings: SqlSettings) -> None:
        """Check the URL now; the engine connects on the first login."""
        self.settings = settings
        try:
            self._url = async_url(settings.url)
            # Made now (it does not connect) so that a missing driver fails at startup.
            self._engine: AsyncEngine | None = self._make_engine()
        except (sa_exc.ArgumentError, ImportError) as exc:
            raise ValueError(f"sql backend: unusable database URL: {exc}") from None

    def _make_engine(self) -> AsyncEngine:
        return create_async_engine(self._url, **self._engine_options())

    def _get_engine(self) -> AsyncEngine:
        if self._engine is None:
            self._engine = self._make_engine()
        return self._engine

    def _engine_options(self) -> dict[str, Any]:
        timeout = self.settings.timeout
        driver = self._url.get_driver_name()
        # Each driver spells its connect timeout differently; without one a filtered port
        # stalls for the driver's default (asyncpg: 60 s).
        connect_args: dict[str, Any] = {}
        if driver in ("asyncpg", "aiosqlite"):
            connect_args["timeout"] = timeout
        elif driver in ("aiomysql", "asyncmy"):
            connect_args["connect_timeout"] = timeout
        options: dict[str, Any] = {"connect_args": connect_args}
        if self._url.get_backend_name() != "sqlite":
            # After a server restart pooled connections are dead: test each before use.
            options |= {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 4}
            options["pool_timeout"] = timeout
        return options

    async def authenticate(
        self, username: str, password: str, *, client_address: str | None = None
    ) -> AuthResult:
        """Fetch the hash for the user and verify it; BackendUnavailable on database errors.

        `client_address` is unused: the password is checked here, after the pooled connection
        went back, so a failure holds no connection or lock that others wait for.
        """
        checked = precheck(self.name, username, password)
        if isinstance(checked, AuthResult):
            return checked
        try:
            rows = await asyncio.wait_for(self._fetch(checked), self.settings.timeout)
        except TimeoutError:
            raise BackendUnavailable(
                self.name, f"no answer within {self.settings.timeout:g} s"
            ) from None
        except Exception as exc:
            if not _is_database_error(exc):
                raise
            raise BackendUnavailable(self.name, _describe(exc)) from None
        if not rows:
            await dummy_verify(password)
            return AuthResult.failure(self.name, checked, "unknown user")
        if len(rows) > 1:
            await dummy_verify(password)
            return AuthResult.failure(self.name, checked, "ambiguous user: several rows match")
        row = rows[0]
        canonical = _canonical(row, checked)
        stored = row[0].decode("ascii", "replace") if isinstance(row[0], bytes) else row[0]
        if not isinstance(stored, str) or not stored:
            await dummy_verify(password)
            return AuthResult.failure(self.name, canonical, "no password hash stored")
        matches = await asyncio.to_thread(verify_hash, stored, password)
        if matches is None:
            await dummy_verify(password)
            return AuthResult.failure(self.name, canonical, "unsupported password hash scheme")
        if not matches:
            return AuthResult.failure(self.name, canonical, "wrong password")
        return AuthResult.success(self.name, canonical)

    async def _fetch(self, name: str) -> list[tuple[Any, ...]]:
        async with self._get_engine().connect() as conn:
            result = await conn.execute(text(self.settings.query), {"username": name})
            # Two rows are enough to know the query is ambiguous.
            return [tuple(row) for row in result.fetchmany(2)]

    async def close(self) -> None:
        """Dispose of the connection pool."""
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()


def _canonical(row: tuple[Any, ...], fallback: str) -> str:
    """The optional second column as the account name, when it is a usable name."""
    if len(row) > 1 and isinstance(row[1], str):
        try:
            return normalize_username(row[1])
        except ValueError:
            pass
    return fallback


def _is_database_error(exc: Exception) -> bool:
    """True for failures of the database or its driver (some asyncpg errors escape raw)."""
    if isinstance(exc, sa_exc.SQLAlchemyError | OSError):
        return True
    return type(exc).__module__.split(".", 1)[0] in _DRIVER_MODULES


def _describe(exc: BaseException) -> str:
    """Type and first line of a database error (never the URL's password)."""
    original = getattr(exc, "orig", None) or exc
    text_ = str(original).splitlines()[0] if str(original) else ""
    return f"{type(original).__name__}: {text_}"[:300]
