"""`kmsgate db / users / clients / stats` against a real SQLite store."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kmsgate.auth.passwords import verify_password
from kmsgate.cli import create_app
from kmsgate.store.database import Store
from kmsgate.store.records import ActivationRecord

app = create_app()

runner = CliRunner()


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'kms.db'}"


def invoke(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def seed(db: str, count: int = 3) -> list[uuid.UUID]:
    cmids = [uuid.uuid4() for _ in range(count)]

    async def run() -> None:
        store = await Store.open(db)
        try:
            await store.record_activations(
                [
                    ActivationRecord(
                        time=datetime.now(UTC), client_machine_id=cmid,
                        machine_name=f"lab-pc-{i}.example.test", address=f"10.0.0.{i}",
                        application_id=None, sku_id=None, sku_name="Windows 11 Pro",
                        kms_id=None, product_family="Windows", license_status=2, protocol=6,
                        result="activated", hresult=0, epid=None, node="node-a",
                    )
                    for i, cmid in enumerate(cmids)
                ]
            )  # fmt: skip
        finally:
            await store.close()

    asyncio.run(run())
    return cmids


def test_db_upgrade_creates_the_schema(db: str, tmp_path: Path) -> None:
    code, out, _ = invoke("db", "upgrade", "--db", db)
    assert code == 0 and "revision" in out
    assert (tmp_path / "kms.db").is_file()
    assert invoke("db", "upgrade", "--db", db)[0] == 0  # idempotent


def test_db_upgrade_reports_an_unreachable_database() -> None:
    code, _, err = invoke("db", "upgrade", "--db", "postgresql://u:secret@127.0.0.1:1/x")
    assert code == 1 and "secret" not in err
    assert err.startswith("error: cannot reach PostgreSQL at 127.0.0.1:1: connection refused")


def test_users_lifecycle_with_password_stdin(db: str) -> None:
    assert invoke("users", "add", "alice", "--admin", "--password-stdin", "--db", db,
                  stdin="s3cret-passphrase\n")[0] == 0  # fmt: skip
    code, _, err = invoke("users", "add", "alice", "--password-stdin", "--db", db,
                          stdin="another-long-pass\n")  # fmt: skip
    assert code == 1 and "already exists" in err
    code, out, _ = invoke("users", "list", "--json", "--db", db)
    users = json.loads(out)
    assert users[0]["name"] == "alice" and users[0]["admin"] is True
    assert "hash" not in out and "argon2" not in out
    assert invoke("users", "passwd", "alice", "--password-stdin", "--db", db,
                  stdin="n3w-pass-phrase\n")[0] == 0  # fmt: skip

    async def stored_hash() -> str:
        store = await Store.open(db)
        try:
            user = await store.get_user("alice")
            assert user is not None
            return user.password_hash
        finally:
            await store.close()

    assert verify_password(asyncio.run(stored_hash()), "n3w-pass-phrase")
    assert invoke("users", "remove", "alice", "--db", db)[0] == 0
    code, _, err = invoke("users", "remove", "alice", "--db", db)
    assert code == 1 and "no user" in err


def test_users_add_refuses_an_empty_password(db: str) -> None:
    code, _, err = invoke("users", "add", "bob", "--password-stdin", "--db", db, stdin="\n")
    assert code == 2 and "empty" in err


def test_clients_table_json_and_search(db: str) -> None:
    cmids = seed(db)
    code, out, _ = invoke("clients", "--db", db)
    assert code == 0 and "lab-pc-2.example.test" in out and "Windows 11 Pro" in out
    code, out, _ = invoke("clients", "--json", "--search", "lab-pc-1", "--db", db)
    rows = json.loads(out)["items"]  # the /api/clients page
    assert [r["cmid"] for r in rows] == [str(cmids[1])]
    code, out, _ = invoke("clients", "--search", "nothing-like-this", "--db", db)
    assert code == 1 and "no clients" in out


def test_stats_json(db: str) -> None:
    seed(db, 4)
    code, out, _ = invoke("stats", "--json", "--db", db)
    figures = json.loads(out)
    assert (figures["clients"], figures["activations"], figures["refusals"]) == (4, 4, 0)
    code, out, _ = invoke("stats", "--db", db)
    assert code == 0 and "last 24 hours: 4 requests" in out


def test_account_changes_are_audited_with_who_made_them(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUDO_USER", "operator-alice")
    password = "s3cret-passphrase\n"
    assert invoke("users", "add", "bob", "--password-stdin", "--db", db, stdin=password)[0] == 0
    assert invoke("users", "add", "eve", "--admin", "--password-stdin", "--db", db,
                  stdin=password)[0] == 0  # fmt: skip
    assert invoke("users", "passwd", "bob", "--password-stdin", "--db", db,
                  stdin="n3w-pass-phrase\n")[0] == 0  # fmt: skip
    assert invoke("users", "quota", "bob", "--week", "3", "--db", db)[0] == 0
    assert invoke("users", "remove", "eve", "--db", db)[0] == 0
    # Refused changes change nothing and leave no row.
    assert invoke("users", "remove", "nobody", "--db", db)[0] == 1
    assert invoke("users", "add", "bob", "--password-stdin", "--db", db, stdin=password)[0] == 1
    code, out, _ = invoke("audit", "--db", db, "--json")
    assert code == 0
    rows = [
        (e["kind"], e["username"], e["backend"], e["detail"])
        for e in reversed(json.loads(out)["items"])  # newest first
    ]
    operator = f"by {getpass.getuser()} (uid {os.getuid()}) via sudo from operator-alice"
    assert rows == [
        ("user_added", "bob", "cli", f"a portal user, {operator} on the command line"),
        ("user_added", "eve", "cli", f"an administrator, {operator} on the command line"),
        ("password_changed", "bob", "cli", f"{operator} on the command line"),
        ("quota_changed", "bob", "cli", f"week 3, month default, {operator} on the command line"),
        ("user_removed", "eve", "cli", f"{operator} on the command line"),
    ]
    code, out, _ = invoke("audit", "--db", db, "--kind", "quota_changed", "--json")
    assert [e["username"] for e in json.loads(out)["items"]] == ["bob"]
