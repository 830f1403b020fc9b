"""Account backends for the login portal: local, LDAP, POP3 and SQL behind one interface."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from kmsgate.access.accounts.ldap import LdapBackend
    from kmsgate.access.accounts.local import LocalBackend
    from kmsgate.access.accounts.pop3 import Pop3Backend
    from kmsgate.access.accounts.sql import SqlBackend
    from kmsgate.store.database import Store

# The backends pull in ldap3, poplib and SQLAlchemy: import them only when one is used, so
# the settings model (which names their settings) stays light for every other command.
_LAZY = {
    "LdapBackend": "kmsgate.access.accounts.ldap",
    "LocalBackend": "kmsgate.access.accounts.local",
    "Pop3Backend": "kmsgate.access.accounts.pop3",
    "SqlBackend": "kmsgate.access.accounts.sql",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


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
        from kmsgate.access.accounts.local import LocalBackend

        return LocalBackend(store)
    if isinstance(config, LdapSettings):
        from kmsgate.access.accounts.ldap import LdapBackend

        return LdapBackend(config)
    if isinstance(config, Pop3Settings):
        from kmsgate.access.accounts.pop3 import Pop3Backend

        return Pop3Backend(config)
    from kmsgate.access.accounts.sql import SqlBackend

    return SqlBackend(config)
