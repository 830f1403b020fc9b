"""Trap 10: every --json output is the JSON API's answer for the same database."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from kmsgate.store.audit import AuditEvent
from kmsgate.store.database import Store
from kmsgate.store.gateway import GatewayStore
from kmsgate.store.records import ActivationRecord
from tests.support.cli import clean_env, kmsgate, start_serve, stop_serve, wait_listening
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

ADMIN, PASSWORD = "admin", "correct horse battery staple"
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def seed(db: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)

    async def run() -> None:
        store = await Store.open(db)
        try:
            await store.record_activations(
                [
                    ActivationRecord(
                        time=now - timedelta(hours=i), client_machine_id=uuid.uuid4(),
                        machine_name=f"lab-pc-{i}.example.test", address=f"10.0.0.{i}",
                        application_id=None, sku_id=None, sku_name="Windows 11 Pro",
                        kms_id=None, product_family="Windows", license_status=1,
                        protocol=6 if i % 2 else 5, result="refused" if i == 3 else "activated",
                        hresult=0xC004F042 if i == 3 else 0, epid=None, node="node-a",
                    )
                    for i in range(6)
                ]
            )  # fmt: skip
            await GatewayStore(store).add_audit(
                [
                    AuditEvent(now, "login_ok", "node-a", username="alice", address="10.0.0.5"),
                    AuditEvent(now, "login_failed", "node-a", username="bob",
                               address="10.0.0.6", detail="wrong password"),
                ]
            )  # fmt: skip
        finally:
            await store.close()

    asyncio.run(run())


async def api(web: int, paths: list[str]) -> list[Any]:
    """Log in as the admin and GET each path; the decoded JSON bodies."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{web}", timeout=10) as client:
        form = await client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token, form.text
        done = await client.post(
            "/login",
            data={"username": ADMIN, "password": PASSWORD, "csrf_token": token[1], "next": "/"},
        )
        assert done.status_code in (302, 303), done.text
        answers = []
        for path in paths:
            response = await client.get(path)
            assert response.status_code == 200, response.text
            answers.append(response.json())
        return answers


def hours_of(stats: dict[str, Any]) -> list[str]:
    return [item["hour"] for item in stats["per_hour"]]


def test_cli_json_equals_the_api_json(tmp_path: Path) -> None:
    db = str(tmp_path / "kms.db")
    seed(f"sqlite:///{db}")
    added = kmsgate("users", "add", ADMIN, "--admin", "--password-stdin", "--db", db,
                    tmp_path=tmp_path, stdin=PASSWORD + "\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    port, web = free_port(), free_port()
    # The node name is a setting like any other: from the environment for both commands.
    env = clean_env(tmp_path, KMSGATE_NODE_NAME="node-a", KMSGATE_DB=db)
    proc = start_serve("--listen", f"127.0.0.1:{port}", "--web", f"127.0.0.1:{web}",
                       "--data-dir", str(tmp_path), tmp_path=tmp_path, env=env)  # fmt: skip
    try:
        wait_listening(proc, web)
        pairs = {
            "stats": (["stats", "--json"], "/api/stats"),
            "clients": (["clients", "--json"], "/api/clients"),
            "audit": (["audit", "--json", "--limit", "50"], "/api/audit"),
        }
        for attempt in range(3):
            cli = {}
            for name, (args, _) in pairs.items():
                done = kmsgate(*args, tmp_path=tmp_path, env=env)
                assert done.returncode == 0, done.stderr
                cli[name] = json.loads(done.stdout)
            answers = asyncio.run(api(web, [path for _, path in pairs.values()]))
            from_api = dict(zip(pairs, answers, strict=True))
            # The stats cover the last 168 hours: retry if an hour began between the reads.
            if hours_of(cli["stats"]) == hours_of(from_api["stats"]) or attempt == 2:
                break
    finally:
        code, _, err = stop_serve(proc)
    assert code == 0, err
    # The API client's own logins are audited (backend dashboard), after the CLI's read.
    for answer in (cli, from_api):
        items = answer["audit"]["items"]
        answer["audit"]["items"] = [e for e in items if e["backend"] != "dashboard"]
    assert cli == from_api
    assert cli["stats"]["node"] == "node-a"
    # One dialect: ISO 8601 with Z, objects rather than [time, count] pairs.
    stats = cli["stats"]
    assert all(ISO_UTC.match(item["hour"]) for item in stats["per_hour"])
    assert ISO_UTC.match(stats["last_activation"])
    assert stats["per_protocol"] == [{"protocol": 5, "count": 3}, {"protocol": 6, "count": 3}]
    assert (stats["activations"], stats["refusals"], stats["clients"]) == (6, 1, 6)
    assert {c["machine_name"] for c in cli["clients"]["items"]} == {
        f"lab-pc-{i}.example.test" for i in range(6)
    }
    assert all(ISO_UTC.match(c["last_seen"]) for c in cli["clients"]["items"])
    # Newest first: the admin's creation by `users add`, then the seeded gateway logins.
    kinds = [e["kind"] for e in cli["audit"]["items"]]
    assert kinds == ["user_added", "login_failed", "login_ok"]


def test_users_list_json_uses_the_same_time_format(tmp_path: Path) -> None:
    db = str(tmp_path / "kms.db")
    added = kmsgate("users", "add", ADMIN, "--admin", "--password-stdin", "--db", db,
                    tmp_path=tmp_path, stdin=PASSWORD + "\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    done = kmsgate("users", "list", "--json", "--db", db, tmp_path=tmp_path)
    users = json.loads(done.stdout)
    assert [(u["name"], u["admin"], u["disabled"]) for u in users] == [(ADMIN, True, False)]
    assert ISO_UTC.match(users[0]["created"])
    assert "argon2" not in done.stdout
