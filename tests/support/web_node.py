"""A real `kmsgate serve` process with a web listener, and an admin client for it."""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx

from kmsgate.auth.passwords import hash_password
from kmsgate.node import SESSION_KEY_FILE
from kmsgate.store.database import Store
from tests.server.test_serve_cli import KMSGATE
from tests.support.browser import ADMIN, ADMIN_PASSWORD, FAST_HASHER
from tests.support.ports import free_port

START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def seed_admin(db_url: str, password: str = ADMIN_PASSWORD, *, cheap: bool = True) -> None:
    """Create the database (migrated) with ADMIN; cheap=False uses production argon2 costs."""

    async def seed() -> None:
        store = await Store.open(db_url)
        try:
            hashed = hash_password(password, hasher=FAST_HASHER if cheap else None)
            await store.add_user(ADMIN, hashed, is_admin=True)
        finally:
            await store.close()

    asyncio.run(seed())


class Node:
    """`kmsgate serve` on free loopback ports; its output goes to a file the test can read."""

    def __init__(
        self,
        data_dir: Path,
        *args: str,
        db: str | None = None,
        open_files: tuple[int, int] | None = None,
        web: bool = True,
    ) -> None:
        """args: more serve options; open_files: (soft, hard) RLIMIT_NOFILE to start with."""
        self.web = web
        self.data_dir = data_dir
        self.args = args
        self.db = db
        self.open_files = open_files
        self.kms_port = free_port()
        self.web_port = free_port()
        self.log_path = data_dir / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def db_url(self) -> str:
        """The node's database: --db, else the SQLite file in its data directory."""
        return self.db or f"sqlite:///{self.data_dir / 'kmsgate.db'}"

    @property
    def url(self) -> str:
        """Base URL of the web listener."""
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def pid(self) -> int:
        """The serving process's pid."""
        assert self.proc is not None
        return self.proc.pid

    def _limits(self) -> None:
        if self.open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, self.open_files)

    def start(self) -> Node:
        """Start and wait (bounded) until both the KMS and the web port accept."""
        argv = [
            str(KMSGATE), "serve", "--listen", f"127.0.0.1:{self.kms_port}",
            "--data-dir", str(self.data_dir), "--log-level", "info", *self.args,
        ]  # fmt: skip
        argv += ["--web", f"127.0.0.1:{self.web_port}"] if self.web else ["--no-web"]
        if self.db is not None:
            argv += ["--db", self.db]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=self._limits
        )
        deadline = time.monotonic() + START_TIMEOUT
        for port in (self.kms_port, self.web_port) if self.web else (self.kms_port,):
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"serve exited early:\n{self.log()[-3000:]}")
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", port)) == 0:
                        break
                if time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"serve did not start:\n{self.log()[-3000:]}")
                time.sleep(0.05)
        return self

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it does not end in time; returns the exit status."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
        if self._log is not None:
            self._log.close()
            self._log = None
        return proc.returncode

    def log(self) -> str:
        """Everything the process has written so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def share_web_secret_with(self, other: Node) -> None:
        """Give `other` this node's cookie key, as nodes behind one name must share it."""
        other.data_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.data_dir / SESSION_KEY_FILE, other.data_dir / SESSION_KEY_FILE)


@contextlib.contextmanager
def running(node: Node) -> Iterator[Node]:
    """The node, started for the block and stopped after it."""
    node.start()
    try:
        yield node
    finally:
        node.stop()


def csrf_of(page: str) -> str:
    """The CSRF token of the first form of an HTML page."""
    match = CSRF_RE.search(page)
    assert match, "no csrf_token in the page"
    return match.group(1)


def admin_login(
    client: httpx.Client, user: str = ADMIN, password: str = ADMIN_PASSWORD
) -> httpx.Response:
    """GET the login form, POST it with its CSRF token; returns the POST's answer."""
    form = client.get("/login")
    assert form.status_code == 200, form.text[:300]
    return client.post(
        "/login",
        data={"username": user, "password": password, "csrf_token": csrf_of(form.text)},
    )


def web_client(node: Node, *, source: str | None = None) -> httpx.Client:
    """A client of node's web listener that does not follow redirects; source: local address."""
    transport = httpx.HTTPTransport(local_address=source) if source else None
    return httpx.Client(base_url=node.url, transport=transport, timeout=30.0)
