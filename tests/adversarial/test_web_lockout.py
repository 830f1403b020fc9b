"""W3: guessing an admin's password from many addresses locks the account, as on the portal.

60 wrong passwords from 15 loopback addresses (4 each: under every per-address limit) against
a real `kmsgate serve`; then the right password, from a new address and an old one.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.server.test_serve_cli import KMSGATE
from tests.support.browser import ADMIN
from tests.support.web_node import Node, admin_login, running, seed_admin, web_client

pytestmark = [pytest.mark.timeout(300), pytest.mark.integration]
SOURCES = [f"127.0.0.{n}" for n in range(2, 17)]
PER_USER_LIMIT = 50  # the portal's default, which the dashboard now shares


def audit_events(node: Node, kind: str) -> list[dict[str, object]]:
    out = subprocess.run(
        [str(KMSGATE), "audit", "--db", node.db_url, "--kind", kind, "--json"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    events: list[dict[str, object]] = json.loads(out.stdout)["items"]
    return events


def test_sixty_guesses_from_fifteen_addresses_lock_the_admin_account(tmp_path: Path) -> None:
    node = Node(tmp_path / "node")
    node.data_dir.mkdir()
    seed_admin(node.db_url)
    clients = [web_client(node, source=source) for source in SOURCES]
    statuses = []
    with running(node):
        try:
            for attempt in range(60):
                client = clients[attempt % len(clients)]
                statuses.append(admin_login(client, ADMIN, f"guess-{attempt}").status_code)
            # During the lockout the right password is refused too, from anywhere.
            for source in ("127.0.0.200", SOURCES[0]):
                with web_client(node, source=source) as owner:
                    answer = admin_login(owner)
                    assert answer.status_code == 429, answer.text[:300]
                    assert "Too many failed logins" in answer.text
                    assert 0 < int(answer.headers["Retry-After"]) <= 900
                    assert "kmsgate_session" not in answer.headers.get("set-cookie", "")
        finally:
            for client in clients:
                client.close()
        log = node.log()
    assert statuses == [401] * PER_USER_LIMIT + [429] * (60 - PER_USER_LIMIT)
    [event] = audit_events(node, "login_locked")
    assert event["username"] == ADMIN and event["backend"] == "dashboard"
    assert event["address"] in SOURCES
    assert "the account is locked from every address for 900 s" in str(event["detail"])
    assert log.count("the account is locked from every address") == 1
    assert "dashboard login: 'admin'" not in log  # never let in
