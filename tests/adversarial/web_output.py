"""Hostile stored strings: what clients and failed logins can make kmsgate store, and helpers
that run the real `kmsgate` commands on a terminal (a pty) or a pipe."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
import subprocess
import uuid
from datetime import UTC, datetime, timedelta

from kmsgate.store.audit import AuditEvent
from kmsgate.store.database import Store
from kmsgate.store.gateway import GatewayStore
from tests.server.test_serve_cli import KMSGATE
from tests.support.kms import RawClient, make_request

# Machine names a client sends in its activation request (at most 63 UTF-16 units each).
HOSTILE_NAMES = (
    "[/bold]x",  # Rich markup that does not balance: MarkupError
    "[link=http://evil.example]click[/link]:smiley:",  # markup, a link and an emoji code
    "\x1b]0;owned\x07\x1b[2Jwiped",  # OSC retitles the terminal, CSI 2J clears it
    "c1\x9b2Jcsi",  # the same clear as a one-byte C1 CSI
    "row-a\u2028row-b",  # LINE SEPARATOR: splits a table row
    "para\u2029graph",  # PARAGRAPH SEPARATOR
    "invoice\u202eexe.pdf",  # RIGHT-TO-LEFT OVERRIDE: shows as invoicefdp.exe
    "\u2066iso\u2069late\u200bhidden",  # isolates and a zero-width space
    "tab\there\nnewline\rreturn",
)
# What every one of them must look like when shown.
SHOWN_NAMES = (
    "[/bold]x",
    "[link=http://evil.example]click[/link]:smiley:",
    "\\x1b]0;owned\\x07\\x1b[2Jwiped",
    "c1\\x9b2Jcsi",
    "row-a\\u2028row-b",
    "para\\u2029graph",
    "invoice\\u202eexe.pdf",
    "\\u2066iso\\u2069late\\u200bhidden",
    "tab\\x09here\\x0anewline\\x0dreturn",
)
RAW_DANGER = ("\x07", "\x9b", "\u2028", "\u2029", "\u202e", "\u2066", "\u2069", "\u200b")
# Escape sequences Rich itself writes to a terminal: SGR styles only.
SGR = re.compile(r"\x1b\[[0-9;]*m")
NOW = datetime.now(UTC).replace(microsecond=0)

# Failed-login user names and audit details (the portal stores what was typed).
HOSTILE_USERS = ("[/bold]x", "\x1b[2Jroot", "adm\u202enimda", ' =HYPERLINK("http://x")')
CSV_HOSTILE = (
    ("=1+1", "'=1+1"),
    (" =1+1", "' =1+1"),
    ("\n=1+1", "'\n=1+1"),
    ("\x00=1+1", "'\\x00=1+1"),
    ("＝1+1", "'＝1+1"),
    ("＋1", "'＋1"),
    ("－1", "'－1"),
    ("＠SUM(A1)", "'＠SUM(A1)"),
    ("\t=1", "'\t=1"),
    ("plain", "plain"),
)


async def activate_as(port: int, names: tuple[str, ...]) -> None:
    """One real activation per machine name, over the KMS protocol."""
    for name in names:
        client = await RawClient.connect(port)
        try:
            await client.bind()
            await client.activate(request=make_request(name=name))
        finally:
            await client.close()


def seed_audit(db_url: str) -> None:
    """Failed logins with hostile user names, and CSV-hostile details."""

    async def seed() -> None:
        store = await Store.open(db_url)
        try:
            events = [
                AuditEvent(NOW - timedelta(seconds=i), "login_failed", "n1", username=name,
                           address="10.0.0.9", backend="local", detail="wrong password")
                for i, name in enumerate(HOSTILE_USERS)
            ] + [
                AuditEvent(NOW - timedelta(minutes=1, seconds=i), "activation", "n1",
                           username="csv", address="10.0.0.8", cmid=uuid.uuid4(),
                           machine_name=HOSTILE_NAMES[i % len(HOSTILE_NAMES)], detail=raw)
                for i, (raw, _) in enumerate(CSV_HOSTILE)
            ]  # fmt: skip
            await GatewayStore(store).add_audit(events)
        finally:
            await store.close()

    asyncio.run(seed())


def run_piped(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """`kmsgate ARGS` with its output in a pipe (what a script or a file gets)."""
    return subprocess.run(
        [str(KMSGATE), *args], capture_output=True, timeout=120, check=False,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def run_on_terminal(*args: str) -> tuple[int, bytes]:
    """`kmsgate ARGS` writing to a pseudo-terminal, as in an administrator's shell."""
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "220"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [str(KMSGATE), *args], stdout=follower, stderr=follower, stdin=subprocess.DEVNULL,
        env=env,
    )  # fmt: skip
    os.close(follower)
    output = bytearray()
    with contextlib.suppress(OSError):  # EIO once the child has closed the terminal
        while chunk := os.read(leader, 65536):
            output += chunk
    os.close(leader)
    return proc.wait(120), bytes(output)


def foreign_escapes(text: str) -> list[str]:
    """Escape sequences and C1 controls in text that are not Rich's own SGR styles."""
    stripped = SGR.sub("", text)
    return [m.group() for m in re.finditer(r"\x1b.{0,8}|[\x80-\x9f]", stripped, re.S)]
