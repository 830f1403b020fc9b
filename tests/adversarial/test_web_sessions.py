"""W2: logging out ends the session on the server; a copied cookie is dead everywhere, for good.

Attacks against real `kmsgate serve` processes: the cookie copied before logout is replayed
after it, after a restart, and on another node sharing the PostgreSQL database.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kmsgate.web.cookies import SessionCodec
from tests.support.browser import ADMIN, ADMIN_PASSWORD
from tests.support.postgres import PostgresServer, running_postgres
from tests.support.web_node import Node, admin_login, csrf_of, running, seed_admin, web_client

pytestmark = [pytest.mark.timeout(300), pytest.mark.integration]
COOKIE = SessionCodec(b"x" * 32, secure=False).session_cookie


def session_of(client: httpx.Client) -> str:
    """The session cookie the last login set (what an attacker would copy)."""
    value = client.cookies.get(COOKIE)
    assert value, "no session cookie after login"
    return value


def log_out(client: httpx.Client) -> None:
    """Press the dashboard's logout button."""
    page = client.get("/dashboard")
    assert page.status_code == 200, page.text[:300]
    answer = client.post("/logout", data={"csrf_token": csrf_of(page.text)})
    assert answer.status_code == 303 and answer.headers["location"] == "/login"


def replay(node: Node, cookie: str) -> tuple[int, int, str]:
    """(dashboard status, API status, dashboard redirect) for a request carrying only cookie."""
    with web_client(node) as thief:
        thief.cookies.set(COOKIE, cookie)
        page = thief.get("/dashboard")
        api = thief.get("/api/stats")
    return page.status_code, api.status_code, page.headers.get("location", "")


def assert_refused(node: Node, cookie: str) -> None:
    page, api, location = replay(node, cookie)
    assert page == 303 and location.startswith("/login"), (page, location)
    assert api == 401


def assert_accepted(node: Node, cookie: str) -> None:
    page, api, _ = replay(node, cookie)
    assert (page, api) == (200, 200)


def test_logout_revokes_the_copied_cookie_also_after_a_restart(tmp_path: Path) -> None:
    node = Node(tmp_path / "node")
    node.data_dir.mkdir()
    seed_admin(node.db_url)
    with running(node):
        with web_client(node) as browser, web_client(node) as other_browser:
            assert admin_login(browser).status_code == 303
            copied = session_of(browser)
            assert admin_login(other_browser).status_code == 303
            kept = session_of(other_browser)
            assert_accepted(node, copied)
            log_out(browser)
        # The old cookie is signed and within its 8 hours, yet opens nothing any more.
        assert_refused(node, copied)
        assert_accepted(node, kept)  # the other session is untouched
        assert "dashboard logout: 'admin'" in node.log()
    with running(node):  # same data directory, same cookie key
        assert_refused(node, copied)
        assert_accepted(node, kept)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


def test_logout_on_one_node_revokes_the_session_on_the_other(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    url = postgres.create_database("sessions")
    seed_admin(url)
    first = Node(tmp_path / "a", "--node-name", "kms-a", db=url)
    second = Node(tmp_path / "b", "--node-name", "kms-b", db=url)
    with running(first):
        first.share_web_secret_with(second)
        with running(second), web_client(first) as browser:
            assert admin_login(browser).status_code == 303
            copied = session_of(browser)
            assert_accepted(second, copied)  # one login serves behind either node
            log_out(browser)
            assert_refused(first, copied)
            assert_refused(second, copied)
    rows = postgres.psql("SELECT count(*) FROM web_sessions", database="sessions")
    assert rows.strip() == "0"


def test_behind_a_tls_proxy_cookies_are_secure_and_hsts_is_sent(tmp_path: Path) -> None:
    """Through a trusted proxy that says the client spoke HTTPS (X-Forwarded-Proto), every
    cookie gets Secure and the answer HSTS; the same headers from a stranger change nothing."""
    node = Node(tmp_path / "node", "--trust-proxy", "127.0.0.1/32")
    node.data_dir.mkdir()
    seed_admin(node.db_url)
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7"}
    with running(node):
        with web_client(node, source="127.0.0.1") as proxy:
            proxy.headers.update(forwarded)
            form = proxy.get("/login")
            # Secure cookies: httpx, speaking plain HTTP to the node, would not send them
            # back; the browser behind the proxy speaks HTTPS and does.
            csrf_cookie = form.headers["set-cookie"].split(";", 1)[0]
            assert "; secure" in form.headers["set-cookie"].lower()
            answer = proxy.post(
                "/login",
                data={"username": ADMIN, "password": ADMIN_PASSWORD,
                      "csrf_token": csrf_of(form.text)},
                headers={"Cookie": csrf_cookie},
            )  # fmt: skip
        with web_client(node, source="127.0.0.2") as stranger:
            stranger.headers.update(forwarded)
            plain = admin_login(stranger)
    assert answer.status_code == plain.status_code == 303
    cookies = answer.headers.get_list("set-cookie")
    assert cookies and all("; secure" in c.lower() for c in cookies), cookies
    assert answer.headers["strict-transport-security"].startswith("max-age=")
    assert not any("secure" in c.lower() for c in plain.headers.get_list("set-cookie"))
    assert "strict-transport-security" not in plain.headers
