"""Accounts from kmsgate's own users table, checked with argon2."""

from __future__ import annotations

import asyncio
import logging

from kmsgate.access.accounts.base import (
    AuthResult,
    BackendUnavailable,
    dummy_verify,
    precheck,
)
from kmsgate.auth.passwords import verify_password
from kmsgate.store.database import Store
from kmsgate.store.errors import StoreError

log = logging.getLogger("kmsgate.access.accounts.local")


class LocalBackend:
    """Looks the user up in the Store; unknown and disabled users cost one argon2 verify too."""

    name: str = "local"

    def __init__(self, store: Store) -> None:
        """Use `store` (owned by the caller, who also closes it)."""
        self._store = store

    async def authenticate(
        self, username: str, password: str, *, client_address: str | None = None
    ) -> AuthResult:
        """Check the password against the stored argon2 hash (`client_address` is unused)."""
        checked = precheck(self.name, username, password)
        if isinstance(checked, AuthResult):
            return checked
        try:
            user = await self._store.get_user(checked)
        except StoreError as exc:
            raise BackendUnavailable(self.name, f"user store: {type(exc).__name__}") from exc
        if user is None:
            # Same argon2 cost as a real check, so response time does not reveal names.
            await dummy_verify(password)
            return AuthResult.failure(self.name, checked, "unknown user")
        # Verify even for disabled accounts: again, timing must not tell them apart.
        matches = await asyncio.to_thread(verify_password, user.password_hash, password)
        if user.disabled:
            return AuthResult.failure(self.name, user.name, "account disabled")
        if not matches:
            return AuthResult.failure(self.name, user.name, "wrong password")
        return AuthResult.success(self.name, user.name)

    async def close(self) -> None:
        """Nothing to release: the Store belongs to the caller."""
