"""§6: bidi marks, separators and controls that clients chose are shown escaped on the dashboard.

Real activations carry the names into a real node; its dashboard pages are then fetched as
an administrator and searched for any of those characters in raw form.
"""

from __future__ import annotations

import asyncio
import html
import re
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.adversarial.web_output import (
    HOSTILE_NAMES,
    RAW_DANGER,
    SHOWN_NAMES,
    activate_as,
    seed_audit,
)
from tests.support.web_node import Node, admin_login, running, seed_admin, web_client

pytestmark = [pytest.mark.timeout(300), pytest.mark.integration]
CLIENT_LINK = re.compile(r'href="(/clients/[0-9a-f-]{36})"')


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """An admin's client of a node that served one activation per hostile name."""
    node = Node(tmp_path_factory.mktemp("dashboard") / "node")
    node.data_dir.mkdir()
    seed_admin(node.db_url)
    seed_audit(node.db_url)
    with running(node), web_client(node) as client:
        assert admin_login(client).status_code == 303
        asyncio.run(activate_as(node.kms_port, HOSTILE_NAMES))
        deadline = time.monotonic() + 30
        while client.get("/api/stats").json()["clients"] < len(HOSTILE_NAMES):
            assert time.monotonic() < deadline, "the activations were not recorded"
            time.sleep(0.2)
        yield client


def page(client: httpx.Client, path: str) -> str:
    answer = client.get(path)
    assert answer.status_code == 200, (path, answer.text[:300])
    return answer.text


def assert_no_raw_danger(text: str, where: str) -> None:
    for danger in (*RAW_DANGER, "\x1b", "\r"):
        assert danger not in text, f"{danger!r} is raw on {where}"


@pytest.mark.parametrize("path", ["/clients?limit=100", "/activations?limit=100", "/dashboard"])
def test_lists_show_hostile_names_escaped(dashboard: httpx.Client, path: str) -> None:
    text = page(dashboard, path)
    assert_no_raw_danger(text, path)
    shown = html.unescape(text)
    expected = SHOWN_NAMES if path != "/dashboard" else SHOWN_NAMES[-5:]  # latest few only
    for name in expected:
        assert name in shown, (path, name)


def test_every_client_page_shows_its_name_escaped(dashboard: httpx.Client) -> None:
    links = sorted(set(CLIENT_LINK.findall(page(dashboard, "/clients?limit=100"))))
    assert len(links) == len(HOSTILE_NAMES)
    for link in links:
        text = page(dashboard, link)
        assert_no_raw_danger(text, link)
        assert any(name in html.unescape(text) for name in SHOWN_NAMES), link


def test_audit_page_shows_hostile_user_names_escaped(dashboard: httpx.Client) -> None:
    text = page(dashboard, "/audit?limit=100")
    assert_no_raw_danger(text, "/audit")
    shown = html.unescape(text)
    for name in ("[/bold]x", "\\x1b[2Jroot", "adm\\u202enimda"):
        assert name in shown
