"""A real `kmsgate serve` recording into SQLite, and what the store attacks need around it.

Root ignores file modes (CAP_DAC_OVERRIDE): as root, the node runs without the two DAC
capabilities (setpriv), so a file made read-only is read-only to it, as it would be to the
service user. It keeps uid 0, so it can still exec this test's interpreter to restart its
record writer process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.server.test_serve_cli import KMSGATE
from tests.support.kms import RawClient, make_request
from tests.support.ports import free_port

NO_DAC_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]
START_TIMEOUT = 30.0
SIDECARS = ("-wal", "-shm")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until `predicate()` holds; seconds it took. AssertionError naming `what` after."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - started


class Node:
    """`kmsgate serve` on loopback ports with its data folder in a fresh temporary folder."""

    def __init__(self, *args: str, seed: Callable[[Path], None] | None = None) -> None:
        """`seed(db_path)` runs before the node starts, to prepare its database."""
        # Not pytest's tmp_path: its root-only parents would hide the data from the node
        # once it runs without DAC override.
        self.base = Path(tempfile.mkdtemp(prefix="kmsgate-store-attack-"))
        self.base.chmod(0o755)
        self.data = self.base / "data"
        self.db = self.data / "kmsgate.db"
        self.port = free_port()
        self.web = free_port()
        self.log_path = self.base / "serve.log"
        self.output: str | None = None
        if seed is not None:
            self.data.mkdir(mode=0o755)
            seed(self.db)
        prefix = NO_DAC_OVERRIDE if os.geteuid() == 0 else []
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [*prefix, str(KMSGATE), "serve", "--listen", f"127.0.0.1:{self.port}",
             "--web", f"127.0.0.1:{self.web}", "--data-dir", str(self.data), *args],
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_until(self._listening, START_TIMEOUT, "kmsgate serve listening")
            wait_until(lambda: self.health()[0] in (200, 503), START_TIMEOUT, "/healthz")
        except BaseException:
            self.stop()
            raise

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"kmsgate serve exited early:\n{self.log()}")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def log(self) -> str:
        """What the node logged so far (all of it once stopped, also after cleanup)."""
        if self.output is not None:
            return self.output
        return self.log_path.read_text(errors="replace")

    def health(self) -> tuple[int, dict[str, Any]]:
        """Status and JSON body of /healthz (0 and {} when it does not answer)."""
        url = f"http://127.0.0.1:{self.web}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except (urllib.error.URLError, OSError):
            return 0, {}

    def store_figures(self) -> dict[str, Any]:
        status, body = self.health()
        assert status in (200, 503), f"/healthz answered {status}"
        figures: dict[str, Any] = body["store"]
        return figures

    def writer_pids(self) -> list[int]:
        """The node's record writer process (its only child)."""
        return [
            int(child)
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        ]

    def kill_writer(self) -> int:
        [pid] = self.writer_pids()
        os.kill(pid, signal.SIGKILL)
        return pid

    def files(self) -> list[Path]:
        return [self.db, *(self.db.with_name(self.db.name + s) for s in SIDECARS)]

    def make_read_only(self) -> None:
        for path in self.files():
            with contextlib.suppress(FileNotFoundError):
                path.chmod(0o444)
        self.data.chmod(0o555)

    def make_writable(self) -> None:
        self.data.chmod(0o755)
        for path in self.files():
            with contextlib.suppress(FileNotFoundError):
                path.chmod(0o644)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.make_writable()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        self.output = self.log_path.read_text(errors="replace")

    def cleanup(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def node(*args: str, seed: Callable[[Path], None] | None = None) -> Iterator[Node]:
    started = Node(*args, seed=seed)
    try:
        yield started
    finally:
        started.stop()
        started.cleanup()


def machine_names(db: Path, prefix: str = "") -> set[str]:
    """Names of the recorded requests whose machine name starts with `prefix`."""
    uri = f"file:{db}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as conn:
        rows = conn.execute(
            "SELECT machine_name FROM activations WHERE machine_name LIKE ? || '%'", (prefix,)
        )
        return {name for (name,) in rows}


async def activate_named(port: int, names: list[str]) -> list[str]:
    """One activation per name, each on its own connection; the names that were served."""
    served = []
    for name in names:
        client = await RawClient.connect(port)
        try:
            await client.bind()
            await client.activate(request=make_request(name=name))
            served.append(name)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            await client.close()
    return served


class Load:
    """Activations in a background thread, each with a unique name, bounded in count and time."""

    def __init__(
        self,
        port: int,
        prefix: str,
        *,
        limit: int = 20_000,
        seconds: float = 120,
        per_second: float = 150,
    ) -> None:
        """At most `limit` activations, `per_second` of them a second, for `seconds`."""
        self.port, self.prefix = port, prefix
        self.limit, self.seconds, self.per_second = limit, seconds, per_second
        self.served: list[str] = []
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def pause(self) -> None:
        """Stop sending and wait until no activation is in flight."""
        self._paused.set()
        self._idle.clear()
        assert self._idle.wait(timeout=30), "the load did not pause"

    def resume(self, prefix: str | None = None) -> None:
        if prefix is not None:
            self.prefix = prefix
        self._paused.clear()

    async def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            if self._paused.is_set() or len(self.served) >= self.limit:
                self._idle.set()
                await asyncio.sleep(0.01)
                continue
            started = time.monotonic()
            names = [f"{self.prefix}-{uuid.uuid4().hex[:12]}" for _ in range(4)]
            done = await asyncio.gather(*(activate_named(self.port, [n]) for n in names))
            self.served.extend(name for batch in done for name in batch)
            await asyncio.sleep(max(0.0, started + len(names) / self.per_second - time.monotonic()))
        self._idle.set()

    def served_with(self, prefix: str) -> set[str]:
        return {name for name in self.served if name.startswith(prefix)}
