"""Account backends for the login portal: local, LDAP, POP3 and SQL behind one interface."""

from __future__ import annotations

from kmsgate.access.accounts.base import (
    AccountBackend,
    AccountSettings,
    AuthResult,
    BackendUnavailable,
    LdapSettings,
    LocalSettings,
    Pop3Settings,
    SqlSettings,
    normalize_username,
)
from kmsgate.access.accounts.ldap import LdapBackend
from kmsgate.access.accounts.local import LocalBackend
from kmsgate.access.accounts.pop3 import Pop3Backend
from kmsgate.access.accounts.sql import SqlBackend
from kmsgate.store.database import Store

__all__ = [
    "AccountBackend",
    "AccountSettings",
    "AuthResult",
    "BackendUnavailable",
    "LdapBackend",
    "LdapSettings",
    "LocalBackend",
    "LocalSettings",
    "Pop3Backend",
    "Pop3Settings",
    "SqlBackend",
    "SqlSettings",
    "build_backend",
    "normalize_username",
]


def build_backend(
    config: LocalSettings | LdapSettings | Pop3Settings | SqlSettings, *, store: Store | None = None
) -> AccountBackend:
    """The backend for `config`; the local backend needs the open `store`."""
    if isinstance(config, LocalSettings):
        if store is None:
            raise ValueError("the local account backend needs the store")
        return LocalBackend(store)
    if isinstance(config, LdapSettings):
        return LdapBackend(config)
    if isinstance(config, Pop3Settings):
        return Pop3Backend(config)
    return SqlBackend(config)
