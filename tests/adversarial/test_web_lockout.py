"""W3: guessing an admin's password from many addresses locks the account to strangers only.

The admin logs in once (from 127.0.0.1, in a browser that keeps its device cookie); then
60 wrong passwords from 15 other loopback addresses (4 each: under every per-address limit)
against a real `kmsgate serve`. The right password is then refused from a new address
without the device cookie (the guessing cannot go on from elsewhere), and accepted from the
admin's own address and from the admin's browser at a new address: strangers cannot lock
the admin out.
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


def test_sixty_guesses_from_fifteen_addresses_lock_the_admin_account_to_strangers_only(
    tmp_path: Path,
) -> None:
    node = Node(tmp_path / "node")
    node.data_dir.mkdir()
    seed_admin(node.db_url)
    clients = [web_client(node, source=source) for source in SOURCES]
    statuses = []
    with running(node):
        try:
            with web_client(node, source="127.0.0.1") as browser:
                assert admin_login(browser).status_code == 303
                device = {k: v for k, v in browser.cookies.items() if k == "kmsgate_device"}
            assert device, "no device cookie after a login"
            for attempt in range(60):
                client = clients[attempt % len(clients)]
                statuses.append(admin_login(client, ADMIN, f"guess-{attempt}").status_code)
            # A client it cannot tell from the guesser: refused, even with the right password.
            for source in ("127.0.0.200", SOURCES[0]):
                with web_client(node, source=source) as stranger:
                    answer = admin_login(stranger)
                    assert answer.status_code == 429, answer.text[:300]
                    assert "Too many failed logins" in answer.text
                    assert 0 < int(answer.headers["Retry-After"]) <= 900
                    assert "kmsgate_session" not in answer.headers.get("set-cookie", "")
            # The admin: from the address they logged in from, and in their browser elsewhere.
            with web_client(node, source="127.0.0.1") as owner:
                assert admin_login(owner).status_code == 303
            with web_client(node, source="127.0.0.201") as travelling:
                travelling.cookies.update(device)
                assert admin_login(travelling).status_code == 303
            with web_client(node, source="127.0.0.201") as typing:
                typing.cookies.update(device)
                # Its own wrong guesses lock that browser, not the account or the address.
                for _ in range(5):
                    assert admin_login(typing, ADMIN, "typo").status_code == 401
                assert admin_login(typing).status_code == 429
            # The browser's login made 127.0.0.201 the admin's address too; its typos were
            # counted against the browser only.
            with web_client(node, source="127.0.0.201") as same_address:
                assert admin_login(same_address).status_code == 303
            with web_client(node, source="127.0.0.203") as stranger:
                assert admin_login(stranger).status_code == 429  # still locked to strangers
        finally:
            for client in clients:
                client.close()
        log = node.log()
    assert statuses == [401] * PER_USER_LIMIT + [429] * (60 - PER_USER_LIMIT)
    [browser_lock, account_lock] = audit_events(node, "login_locked")  # newest first
    assert account_lock["username"] == ADMIN and account_lock["backend"] == "dashboard"
    assert account_lock["address"] in SOURCES
    assert "the account is locked for addresses and browsers it was not used from for 900 s" in (
        str(account_lock["detail"])
    )
    assert "logins from this browser at 127.0.0.201 are locked" in str(browser_lock["detail"])
    assert log.count("the account is locked for addresses and browsers") == 1
    assert log.count("dashboard login: 'admin'") == 4
