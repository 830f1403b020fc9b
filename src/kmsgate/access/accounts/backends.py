"""The account backend a setting names; each backend's own imports are paid only when used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kmsgate.access.accounts.base import (
    AccountBackend,
    LdapSettings,
    LocalSettings,
    Pop3Settings,
    SqlSettings,
)

if TYPE_CHECKING:
    from kmsgate.store.database import Store


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
