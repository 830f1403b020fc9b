"""Trap 11: a minimum password length for local accounts, administrators included."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kmsgate.auth.passwords import verify_password
from kmsgate.store.database import Store
from tests.support.cli import clean_env, kmsgate

pytestmark = pytest.mark.integration


def stored_hash(db: Path, name: str) -> str:
    async def run() -> str:
        store = await Store.open(f"sqlite:///{db}", upgrade=False)
        try:
            user = await store.get_user(name)
            assert user is not None
            return user.password_hash
        finally:
            await store.close()

    return asyncio.run(run())


def refusal(length: int, needed: int) -> str:
    return (
        f"error: the password has {length} characters; it needs at least {needed} "
        "(min_password_length: --min-password-length, KMSGATE_MIN_PASSWORD_LENGTH or the "
        "config file)\n"
    )


@pytest.mark.parametrize("admin", [["--admin"], []], ids=["admin", "user"])
def test_users_add_refuses_a_short_password_and_creates_nothing(
    admin: list[str], tmp_path: Path
) -> None:
    db = tmp_path / "kms.db"
    done = kmsgate("users", "add", "alice", *admin, "--password-stdin", "--db", str(db),
                   tmp_path=tmp_path, stdin="elevenchars\n")  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == refusal(11, 12)
    assert not db.exists()
    done = kmsgate("users", "add", "alice", *admin, "--password-stdin", "--db", str(db),
                   tmp_path=tmp_path, stdin="twelve-chars\n")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert verify_password(stored_hash(db, "alice"), "twelve-chars")


def test_the_minimum_comes_from_flag_environment_or_file(tmp_path: Path) -> None:
    db = tmp_path / "kms.db"
    base = ["users", "add", "--password-stdin", "--db", str(db)]
    # Raised on the command line.
    done = kmsgate(*base, "u1", "--min-password-length", "20", tmp_path=tmp_path,
                   stdin="fifteen-chars!!\n")  # fmt: skip
    assert (done.returncode, done.stderr) == (2, refusal(15, 20))
    # Lowered in the environment (a lab), or raised in the config file.
    env = clean_env(tmp_path, KMSGATE_MIN_PASSWORD_LENGTH="8")
    done = kmsgate(*base, "u2", tmp_path=tmp_path, env=env, stdin="8-chars!\n")
    assert done.returncode == 0, done.stderr
    config = tmp_path / "kmsgate.toml"
    config.write_text("min_password_length = 16\n")
    done = kmsgate(*base, "u3", "--config", str(config), tmp_path=tmp_path,
                   stdin="thirteen-char\n")  # fmt: skip
    assert (done.returncode, done.stderr) == (2, refusal(13, 16))


def test_passwd_refuses_a_short_password_and_keeps_the_old_one(tmp_path: Path) -> None:
    db = tmp_path / "kms.db"
    done = kmsgate("users", "add", "admin", "--admin", "--password-stdin", "--db", str(db),
                   tmp_path=tmp_path, stdin="the-first-password\n")  # fmt: skip
    assert done.returncode == 0, done.stderr
    before = stored_hash(db, "admin")
    done = kmsgate("users", "passwd", "admin", "--password-stdin", "--db", str(db),
                   tmp_path=tmp_path, stdin="short\n")  # fmt: skip
    assert (done.returncode, done.stderr) == (2, refusal(5, 12))
    assert stored_hash(db, "admin") == before
    done = kmsgate("users", "passwd", "admin", "--password-stdin", "--db", str(db),
                   tmp_path=tmp_path, stdin="a-second-password\n")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert verify_password(stored_hash(db, "admin"), "a-second-password")


def test_the_minimum_must_itself_be_sensible(tmp_path: Path) -> None:
    done = kmsgate("users", "add", "x", "--password-stdin", "--min-password-length", "0",
                   "--db", str(tmp_path / "kms.db"), tmp_path=tmp_path, stdin="p\n")  # fmt: skip
    assert (done.returncode, done.stderr) == (
        2,
        "error: min_password_length: 0 is below the minimum 1\n",
    )
    env = clean_env(tmp_path, KMSGATE_MIN_PASSWORD_LENGTH="0")
    done = kmsgate("users", "add", "x", "--password-stdin", "--db", str(tmp_path / "kms.db"),
                   tmp_path=tmp_path, env=env, stdin="p\n")  # fmt: skip
    assert (done.returncode, done.stderr) == (
        2,
        "error: min_password_length: 0 is below the minimum 1\n",
    )
