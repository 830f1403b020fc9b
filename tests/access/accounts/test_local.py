"""Local backend on a real Store (SQLite), username rules, and the backend factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter
from sqlalchemy import update

from kmsgate.access.accounts.backends import build_backend
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
from kmsgate.auth.passwords import hash_password, verify_password
from kmsgate.store.database import Store
from kmsgate.store.schema import users

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hashes() -> dict[str, str]:
    """argon2 hashes made once per module (hashing is slow on purpose)."""
    return {"alice": hash_password("Wonderland-1"), "carol": hash_password("carol-pass")}


@pytest.fixture
async def store(tmp_path: Path, hashes: dict[str, str]) -> AsyncIterator[Store]:
    """A migrated SQLite store with alice (active) and carol (disabled)."""
    opened = await Store.open(f"sqlite:///{tmp_path}/kmsgate.db")
    try:
        for name, password_hash in hashes.items():
            await opened.add_user(name, password_hash)
        async with opened.engine.begin() as conn:
            await conn.execute(update(users).where(users.c.name == "carol").values(disabled=True))
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def verify_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count argon2 verifications made by the local backend and the dummy path."""
    calls: list[str] = []

    def counting(original: Callable[..., bool], where: str) -> Callable[..., bool]:
        def wrapper(*args: Any, **kwargs: Any) -> bool:
            calls.append(where)
            return original(*args, **kwargs)

        return wrapper

    # The names each module looks up at call time (both bound to the same function).
    monkeypatch.setattr(
        "kmsgate.access.accounts.local.verify_password", counting(verify_password, "real")
    )
    monkeypatch.setattr(
        "kmsgate.access.accounts.base.verify_password", counting(verify_password, "dummy")
    )
    return calls


async def test_right_password_is_accepted(store: Store) -> None:
    result = await LocalBackend(store).authenticate(" alice ", "Wonderland-1")
    assert result == AuthResult(ok=True, user="alice", reason="ok", backend="local")


async def test_wrong_password_is_refused(store: Store) -> None:
    result = await LocalBackend(store).authenticate("alice", "wonderland-1")
    assert (result.ok, result.user, result.reason) == (False, "alice", "wrong password")


async def test_unknown_user_costs_one_argon2_verify(store: Store, verify_calls: list[str]) -> None:
    result = await LocalBackend(store).authenticate("mallory", "Wonderland-1")
    assert (result.ok, result.reason) == (False, "unknown user")
    assert verify_calls == ["dummy"]


async def test_known_user_costs_one_argon2_verify(store: Store, verify_calls: list[str]) -> None:
    assert not (await LocalBackend(store).authenticate("alice", "nope")).ok
    assert verify_calls == ["real"]


async def test_disabled_user_fails_even_with_the_right_password(
    store: Store, verify_calls: list[str]
) -> None:
    result = await LocalBackend(store).authenticate("carol", "carol-pass")
    assert (result.ok, result.reason) == (False, "account disabled")
    assert verify_calls == ["real"]  # same cost as any other attempt


async def test_names_are_exact(store: Store) -> None:
    # The store compares names exactly: no case folding, no wildcard.
    for name in ("Alice", "alic%", "ali_e", "*"):
        assert not (await LocalBackend(store).authenticate(name, "Wonderland-1")).ok


async def test_empty_password_fails(store: Store, verify_calls: list[str]) -> None:
    result = await LocalBackend(store).authenticate("alice", "")
    assert (result.ok, result.reason) == (False, "empty password")
    assert verify_calls == []


@pytest.mark.parametrize("username", ["*)(uid=*", "admin)(|(uid=*", "alice' OR '1'='1"])
async def test_injection_attempts_fail(store: Store, username: str) -> None:
    assert not (await LocalBackend(store).authenticate(username, "Wonderland-1")).ok


async def test_store_failure_is_unavailable(tmp_path: Path) -> None:
    # A database without the schema: the users table is missing.
    broken = await Store.open(f"sqlite:///{tmp_path}/empty.db", upgrade=False)
    try:
        with pytest.raises(BackendUnavailable) as caught:
            await LocalBackend(broken).authenticate("alice", "Wonderland-1")
        assert "Wonderland-1" not in str(caught.value)
    finally:
        await broken.close()


# ---------------------------------------------------------------- username rules


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("alice", "alice"),
        ("  alice\t", "alice"),
        ("doe, john", "doe, john"),
        ("ä" * 256, "ä" * 256),
    ],
)
def test_normalize_username_accepts(raw: str, expected: str) -> None:
    assert normalize_username(raw) == expected


@pytest.mark.parametrize(
    "raw", ["", "  ", "a" * 257, "ali\nce", "ali\rce", "a\x00", "a\x1b[31m", "a\u200bb", "a\u2028b"]
)
def test_normalize_username_rejects(raw: str) -> None:
    with pytest.raises(ValueError) as caught:
        normalize_username(raw)
    if raw.strip():  # the message never echoes the (possibly hostile) name
        assert raw.strip() not in str(caught.value)


async def test_overlong_password_fails_without_hashing(
    store: Store, verify_calls: list[str]
) -> None:
    result = await LocalBackend(store).authenticate("alice", "x" * 5000)
    assert (result.ok, result.reason) == (False, "password too long")
    assert verify_calls == []


# ---------------------------------------------------------------- factory


async def test_build_backend_picks_the_class(store: Store) -> None:
    adapter: TypeAdapter[Any] = TypeAdapter(AccountSettings)
    cases: list[tuple[dict[str, Any], type]] = [
        ({"backend": "local"}, LocalBackend),
        ({"backend": "ldap", "url": "ldaps://h", "search_base": "o=x"}, LdapBackend),
        ({"backend": "pop3", "host": "h"}, Pop3Backend),
        ({"backend": "sql", "url": "sqlite:///x", "query": "SELECT 1 WHERE :username"}, SqlBackend),
    ]
    for raw, cls in cases:
        config = adapter.validate_python(raw)
        backend = build_backend(config, store=store)
        assert isinstance(backend, cls)
        assert isinstance(backend, AccountBackend)
        assert backend.name == raw["backend"]
        await backend.close()


def test_local_backend_needs_the_store() -> None:
    with pytest.raises(ValueError, match="store"):
        build_backend(LocalSettings())


def test_settings_models_are_exported() -> None:
    assert {LdapSettings, Pop3Settings, SqlSettings, LocalSettings}
