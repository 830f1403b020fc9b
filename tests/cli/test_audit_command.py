"""`kmsgate audit` and `kmsgate users quota` against a real SQLite store."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kmsgate.cli import create_app
from kmsgate.store.audit import AuditEvent
from kmsgate.store.database import Store
from kmsgate.store.gateway import GatewayStore

app = create_app()

runner = CliRunner()
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'kms.db'}"
    cmid = uuid.uuid4()

    async def seed() -> None:
        store = await Store.open(url)
        try:
            await store.add_user("alice", "$argon2id$placeholder")
            await GatewayStore(store).add_audit(
                [
                    AuditEvent(NOW, "login_ok", "n1", username="alice", address="10.0.0.5"),
                    AuditEvent(NOW + timedelta(seconds=5), "activation", "n1", username="alice",
                               address="10.0.0.5", cmid=cmid, machine_name="=cmd|calc",
                               product="Windows 11 Pro", result="activated"),
                    AuditEvent(NOW + timedelta(seconds=9), "login_failed", "n1", username="bob",
                               address="10.0.0.6", detail="wrong password"),
                ]
            )  # fmt: skip
        finally:
            await store.close()

    asyncio.run(seed())
    return url


def test_audit_table_filters_and_json(db: str) -> None:
    result = runner.invoke(app, ["audit", "--db", db])
    assert result.exit_code == 0 and "login_failed" in result.stdout
    result = runner.invoke(app, ["audit", "--db", db, "--user", "alice", "--json"])
    events = json.loads(result.stdout)["items"]  # the /api/audit page
    assert [e["kind"] for e in events] == ["activation", "login_ok"]
    assert events[0]["product"] == "Windows 11 Pro"
    since = (NOW + timedelta(seconds=6)).isoformat()
    result = runner.invoke(app, ["audit", "--db", db, "--since", since, "--json"])
    assert [e["username"] for e in json.loads(result.stdout)["items"]] == ["bob"]


def test_audit_csv_is_injection_safe(db: str) -> None:
    result = runner.invoke(app, ["audit", "--db", db, "--csv", "--kind", "activation"])
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 1 and rows[0]["machine_name"] == "'=cmd|calc"


def test_audit_rejects_bad_arguments(db: str) -> None:
    assert runner.invoke(app, ["audit", "--db", db, "--kind", "nope"]).exit_code == 2
    assert runner.invoke(app, ["audit", "--db", db, "--since", "yesterday"]).exit_code == 2


def test_users_quota_overrides(db: str) -> None:
    result = runner.invoke(app, ["users", "quota", "alice", "--week", "3", "--db", db])
    assert result.exit_code == 0 and "week 3, month default" in result.stdout

    async def read() -> tuple[int | None, int | None]:
        store = await Store.open(db)
        try:
            return await GatewayStore(store).get_quota("alice")
        finally:
            await store.close()

    assert asyncio.run(read()) == (3, None)
    result = runner.invoke(app, ["users", "quota", "ghost", "--week", "1", "--db", db])
    assert result.exit_code == 1 and "no user" in result.stderr
