"""Argon2id password hashing shared by the dashboard login and `kmsgate users`."""

from __future__ import annotations

import functools

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["default_hasher", "hash_password", "needs_rehash", "verify_password"]

# Argon2 hashes the whole input; a cap stops a huge form field from becoming a CPU/memory sink.
MAX_PASSWORD_LENGTH = 1024


@functools.cache
def default_hasher() -> PasswordHasher:
    """The process-wide hasher with argon2-cffi's recommended (RFC 9106 low-memory) costs."""
    return PasswordHasher()


def hash_password(password: str, *, hasher: PasswordHasher | None = None) -> str:
    """Hash a password into a self-describing `$argon2id$...` string."""
    if not password:
        raise ValueError("password must not be empty")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValueError(f"password longer than {MAX_PASSWORD_LENGTH} characters")
    return (hasher or default_hasher()).hash(password)


def verify_password(
    password_hash: str, password: str, *, hasher: PasswordHasher | None = None
) -> bool:
    """True when password matches the hash; False on mismatch or an unreadable hash."""
    if not password or len(password) > MAX_PASSWORD_LENGTH:
        return False
    try:
        return (hasher or default_hasher()).verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str, *, hasher: PasswordHasher | None = None) -> bool:
    """True when the hash was made with other costs than the hasher's (rehash after login)."""
    try:
        return (hasher or default_hasher()).check_needs_rehash(password_hash)
    except (InvalidHashError, ValueError):
        return True
