"""The account-backend interface, its settings models and the checks every backend shares."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import secrets
import ssl
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from kmsgate.auth.passwords import MAX_PASSWORD_LENGTH, hash_password, verify_password
from kmsgate.errors import KmsgateError

__all__ = [
    "MAX_PASSWORD_LENGTH",
    "MAX_USERNAME_LENGTH",
    "AccountBackend",
    "AccountSettings",
    "AuthResult",
    "BackendUnavailable",
    "LdapSettings",
    "LocalSettings",
    "Pop3Settings",
    "SqlSettings",
    "client_tls_context",
    "dummy_verify",
    "normalize_username",
    "precheck",
    "run_blocking",
]

log = logging.getLogger("kmsgate.access.accounts")

MAX_USERNAME_LENGTH = 256
USER_PLACEHOLDER = "{user}"
DEFAULT_TIMEOUT = 5.0
MAX_TIMEOUT = 120.0

T = TypeVar("T")


class BackendUnavailable(KmsgateError):  # noqa: N818 (name fixed by the portal contract)
    """The account server could not answer (unreachable, timeout, TLS failure, misconfigured)."""

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"{backend} account server unavailable: {reason}")
        self.backend = backend
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AuthResult:
    """Outcome of one login; `reason` goes to the audit log and never holds the password."""

    ok: bool
    user: str
    reason: str
    backend: str

    @classmethod
    def success(cls, backend: str, user: str) -> AuthResult:
        """The password was right; `user` is the canonical account name."""
        return cls(ok=True, user=user, reason="ok", backend=backend)

    @classmethod
    def failure(cls, backend: str, user: str, reason: str) -> AuthResult:
        """The login was refused for `reason` (wrong password, unknown user, ...)."""
        return cls(ok=False, user=user, reason=reason, backend=backend)


@runtime_checkable
class AccountBackend(Protocol):
    """Checks a user name and password against one account source."""

    name: str

    async def authenticate(
        self, username: str, password: str, *, client_address: str | None = None
    ) -> AuthResult:
        """AuthResult for the credentials; BackendUnavailable when the server cannot answer.

        `client_address` is the portal client's IP address, for servers that throttle failed
        logins per address and can be told whom a front end logs in for (POP3 XCLIENT).
        """
        ...

    async def close(self) -> None:
        """Release pooled connections (a no-op for backends without any)."""
        ...


# ---------------------------------------------------------------- input checks


def normalize_username(raw: str) -> str:
    """Strip surrounding blanks; ValueError (safe to log) when empty, too long or has controls."""
    name = raw.strip()
    if not name:
        raise ValueError("empty username")
    if len(name) > MAX_USERNAME_LENGTH:
        raise ValueError(f"username longer than {MAX_USERNAME_LENGTH} characters")
    # Cc covers CR/LF/NUL (POP3 command and log injection); Cf/Zl/Zp are invisible
    # characters that make two different names look the same in the audit log.
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs") for c in name):
        raise ValueError("username contains control characters")
    return name


def precheck(backend: str, username: str, password: str) -> str | AuthResult:
    """The normalised user name, or the failure every backend gives without asking a server."""
    try:
        name = normalize_username(username)
    except ValueError as exc:
        # The raw name may hold control characters: keep it out of the result and the log.
        return AuthResult.failure(backend, "", f"invalid username: {exc}")
    # An empty password must never reach LDAP: a simple bind with a DN and no password
    # is an "unauthenticated bind" that many servers answer with success.
    if not password:
        return AuthResult.failure(backend, name, "empty password")
    if len(password) > MAX_PASSWORD_LENGTH:
        return AuthResult.failure(backend, name, "password too long")
    return name


@functools.cache
def _dummy_hash() -> str:
    """An argon2 hash of a random secret, made once, for constant-time misses."""
    return hash_password(secrets.token_urlsafe(24))


async def dummy_verify(password: str) -> None:
    """Spend one argon2 verify so that an unknown user costs as much time as a known one."""
    dummy = _dummy_hash()
    await asyncio.to_thread(verify_password, dummy, password or "x")


async def run_blocking(backend: str, func: Callable[[], T], timeout: float) -> T:
    """Run a blocking client call in a thread; BackendUnavailable when it overruns `timeout`."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(func), timeout)
    except TimeoutError:
        # The thread keeps going until its own socket timeout ends it; we stop waiting.
        raise BackendUnavailable(backend, f"no answer within {timeout:g} s") from None


def client_tls_context(ca_file: Path | None, verify: bool) -> ssl.SSLContext:
    """A client context: system CAs (or `ca_file`) and hostname checks unless verify=False."""
    if not verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback literals (where cleartext passwords do not travel)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------- settings


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_template(value: str, what: str) -> str:
    if USER_PLACEHOLDER not in value:
        raise ValueError(f"{what} must contain {USER_PLACEHOLDER}")
    return value


class LocalSettings(_Settings):
    """Accounts from kmsgate's own users table (argon2 hashes, `kmsgate users`)."""

    backend: Literal["local"] = "local"


class LdapSettings(_Settings):
    """An LDAP directory: direct bind via a DN template, or search (as a service) then bind."""

    backend: Literal["ldap"] = "ldap"
    url: str = Field(description="ldap://host[:port] or ldaps://host[:port]")
    start_tls: bool = Field(
        default=False, description="upgrade ldap:// with StartTLS before binding"
    )
    bind_dn_template: str | None = Field(
        default=None, description="e.g. uid={user},ou=people,dc=example,dc=org: bind as that DN"
    )
    search_base: str | None = Field(default=None, description="where to search the user's entry")
    search_filter: str = Field(default="(uid={user})", description="filter; {user} is escaped")
    service_bind_dn: str | None = Field(
        default=None, description="DN to search as (else anonymous)"
    )
    service_password: SecretStr | None = None
    name_attribute: str = Field(default="uid", description="attribute holding the canonical name")
    ca_file: Path | None = None
    verify_tls: bool = True
    timeout: float = Field(default=DEFAULT_TIMEOUT, gt=0, le=MAX_TIMEOUT)

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
            raise ValueError("url must look like ldap://host[:port] or ldaps://host[:port]")
        if parts.path not in ("", "/") or parts.query or parts.username:
            raise ValueError("url takes no DN, query or credentials: use the other settings")
        _ = parts.port  # raises ValueError for a port out of range
        return value

    @field_validator("bind_dn_template")
    @classmethod
    def _valid_dn_template(cls, value: str | None) -> str | None:
        return None if value is None else _check_template(value, "bind_dn_template")

    @field_validator("search_filter")
    @classmethod
    def _valid_filter(cls, value: str) -> str:
        value = _check_template(value, "search_filter")
        if not (value.startswith("(") and value.endswith(")")):
            raise ValueError("search_filter must be a parenthesised LDAP filter")
        return value

    @model_validator(mode="after")
    def _one_mode(self) -> LdapSettings:
        if (self.bind_dn_template is None) == (self.search_base is None):
            raise ValueError("set exactly one of bind_dn_template and search_base")
        if self.start_tls and self.url.lower().startswith("ldaps:"):
            raise ValueError("start_tls applies to ldap:// only (ldaps:// is TLS already)")
        if (self.service_bind_dn is None) != (self.service_password is None):
            raise ValueError("service_bind_dn and service_password go together")
        # An empty service password would be an unauthenticated bind: anonymous in disguise.
        if self.service_password is not None and not self.service_password.get_secret_value():
            raise ValueError("service_password must not be empty")
        return self


class Pop3Settings(_Settings):
    """A POP3 server: USER/PASS over POP3S, STLS or (loopback only, sensibly) plaintext."""

    backend: Literal["pop3"] = "pop3"
    host: str
    port: int | None = Field(
        default=None, ge=1, le=65535, description="default 110, or 995 for pop3s"
    )
    mode: Literal["plain", "stls", "pop3s"] = "stls"
    ca_file: Path | None = None
    verify_tls: bool = True
    timeout: float = Field(default=DEFAULT_TIMEOUT, gt=0, le=MAX_TIMEOUT)
    username_template: str = Field(default="{user}", description="e.g. {user}@example.org")
    forward_client_address: bool = Field(
        default=False,
        description="send XCLIENT ADDR=<portal client> before logging in, so that the server "
        "throttles failed logins per client rather than per kmsgate (Dovecot: list kmsgate "
        "in login_trusted_networks)",
    )

    @field_validator("username_template")
    @classmethod
    def _valid_template(cls, value: str) -> str:
        return _check_template(value, "username_template")

    @property
    def effective_port(self) -> int:
        """The configured port or the mode's well-known one."""
        if self.port is not None:
            return self.port
        return 995 if self.mode == "pop3s" else 110


class SqlSettings(_Settings):
    """An SQL table of accounts: `query` takes :username and returns the password hash."""

    backend: Literal["sql"] = "sql"
    # repr=False: the URL may carry the database password.
    url: str = Field(repr=False, description="SQLAlchemy URL, e.g. postgresql://u:p@host/db")
    query: str = Field(
        description="SELECT hash[, canonical name] ... WHERE name = :username (one row)"
    )
    timeout: float = Field(default=DEFAULT_TIMEOUT, gt=0, le=MAX_TIMEOUT)

    @field_validator("query")
    @classmethod
    def _valid_query(cls, value: str) -> str:
        if ":username" not in value:
            raise ValueError("query must use the bind parameter :username")
        return value


AccountSettings = Annotated[
    LocalSettings | LdapSettings | Pop3Settings | SqlSettings, Field(discriminator="backend")
]
