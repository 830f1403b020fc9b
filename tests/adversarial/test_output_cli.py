"""W1, §6: names that clients and failed logins chose cannot forge or break terminal output.

Real activations carry hostile machine names into a real node's database; hostile failed-login
names are seeded into its audit trail. Then the real `kmsgate clients` and `kmsgate audit`
run on a pseudo-terminal and into a pipe.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections.abc import Iterator

import pytest

from tests.adversarial.web_output import (
    CSV_HOSTILE,
    HOSTILE_NAMES,
    HOSTILE_USERS,
    RAW_DANGER,
    SHOWN_NAMES,
    activate_as,
    foreign_escapes,
    run_on_terminal,
    run_piped,
    seed_audit,
)
from tests.support.web_node import Node, running

pytestmark = [pytest.mark.timeout(300), pytest.mark.integration]


@pytest.fixture(scope="module")
def db_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A node's database after it served one activation per hostile machine name."""
    node = Node(tmp_path_factory.mktemp("output") / "node", web=False)
    with running(node):
        asyncio.run(activate_as(node.kms_port, HOSTILE_NAMES))
        deadline = time.monotonic() + 30
        while True:
            listed = run_piped("clients", "--db", node.db_url, "--json")
            recorded = json.loads(listed.stdout)["items"] if listed.returncode == 0 else []
            if len(recorded) == len(HOSTILE_NAMES):
                break
            assert time.monotonic() < deadline, "the activations were not recorded"
            time.sleep(0.2)
    seed_audit(node.db_url)
    yield node.db_url


def assert_shown_safely(text: str) -> None:
    for danger in RAW_DANGER:
        assert danger not in text, f"{danger!r} reached the output"
    assert foreign_escapes(text) == []


def test_clients_table_on_a_terminal_shows_every_name_escaped_on_its_own_row(db_url: str) -> None:
    status, raw = run_on_terminal("clients", "--db", db_url)
    text = raw.decode()
    assert status == 0, text[-2000:]
    assert "MarkupError" not in text and "Traceback" not in text
    assert_shown_safely(text)
    rows = [line for line in text.splitlines() if "127.0.0.1" in line]
    assert len(rows) == len(HOSTILE_NAMES)  # no name split a row or swallowed one
    for shown in SHOWN_NAMES:
        assert sum(shown in row for row in rows) == 1, shown
    assert "😃" not in text  # :smiley: stays text


def test_clients_in_a_pipe_carry_no_escape_and_json_keeps_the_exact_names(db_url: str) -> None:
    table = run_piped("clients", "--db", db_url, env={"FORCE_COLOR": "1"})
    assert table.returncode == 0, table.stderr.decode()
    text = table.stdout.decode()
    assert_shown_safely(text)
    for shown in SHOWN_NAMES:
        assert shown in text
    listed = run_piped("clients", "--db", db_url, "--json")
    assert listed.stdout.isascii()  # every control, bidi and separator escaped as \uXXXX
    names = {row["machine_name"] for row in json.loads(listed.stdout)["items"]}
    assert names == set(HOSTILE_NAMES)  # and a JSON reader gets the stored strings back


def test_audit_table_shows_hostile_user_names_literally(db_url: str) -> None:
    status, raw = run_on_terminal("audit", "--db", db_url, "--limit", "1000")
    text = raw.decode()
    assert status == 0, text[-2000:]
    assert "MarkupError" not in text and "Traceback" not in text
    assert_shown_safely(text)
    for shown in ("[/bold]x", "\\x1b[2Jroot", "adm\\u202enimda"):
        assert shown in text
    for shown in SHOWN_NAMES:
        assert shown in text
    users = run_piped("audit", "--db", db_url, "--kind", "login_failed", "--json")
    assert users.stdout.isascii()
    assert {e["username"] for e in json.loads(users.stdout)["items"]} == set(HOSTILE_USERS)


def test_audit_csv_neutralises_formulas_and_keeps_exact_cells_in_a_file(db_url: str) -> None:
    out = run_piped("audit", "--db", db_url, "--kind", "activation", "--csv")
    assert out.returncode == 0, out.stderr.decode()
    rows = list(csv.DictReader(io.StringIO(out.stdout.decode())))
    details = {row["detail"] for row in rows}
    assert details == {cell for _, cell in CSV_HOSTILE}
    assert b"\x00" not in out.stdout
    # In a file, cells stay exact but for that quote: a leading control gets one too.
    names = {row["machine_name"] for row in rows}
    expected = {("'" if name[0] in "\x1b\u2066" else "") + name for name in HOSTILE_NAMES}
    assert names and names <= expected, names - expected


def test_audit_csv_on_a_terminal_is_escaped(db_url: str) -> None:
    status, raw = run_on_terminal("audit", "--db", db_url, "--csv")
    text = raw.decode()
    assert status == 0, text[-2000:]
    assert_shown_safely(text)
    assert "\\x1b]0;owned\\x07" in text
