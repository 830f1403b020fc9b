"""A throwaway PostgreSQL server on loopback, from Debian's postgresql package, for tests."""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ports import free_port

SUPERUSER = "kmsgate"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
# Durability is worthless for a scratch cluster; these make initdb and commits fast.
PR_SET_PDEATHSIG = 1
FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def find_bindir() -> Path | None:
    """Newest /usr/lib/postgresql/<ver>/bin holding initdb and postgres, else pg_config's."""
    candidates: list[tuple[int, Path]] = []
    for path in Path("/usr/lib/postgresql").glob("*/bin"):
        if (path / "initdb").exists() and (path / "postgres").exists():
            with contextlib.suppress(ValueError):
                candidates.append((int(path.parent.name.split(".")[0]), path))
    if candidates:
        return max(candidates)[1]
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        path = Path(out.stdout.strip())
        if (path / "initdb").exists() and (path / "postgres").exists():
            return path
    return None


def require_bindir() -> Path:
    """The binaries, or fail the test (skip only when KMSGATE_ALLOW_SKIP=1)."""
    bindir = find_bindir()
    if bindir is None:
        message = "PostgreSQL server binaries not found: apt-get install postgresql"
        if os.environ.get("KMSGATE_ALLOW_SKIP") == "1":
            pytest.skip(message)
        pytest.fail(message)
    return bindir


def _die_with_parent() -> None:
    """In the child: get SIGINT (fast shutdown) if the test process dies without cleanup."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGINT)


def _run_as() -> str | None:
    """PostgreSQL refuses to run as root: pick an unprivileged account when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and no 'postgres' or 'nobody' account to run as")


class PostgresServer:
    """initdb into a temp dir, run `postgres` on 127.0.0.1:<free port>, stop and clean up."""

    def __init__(self, bindir: Path, *, settings: tuple[str, ...] = FAST_SETTINGS) -> None:
        self.bindir = bindir
        self.settings = settings
        self.user = _run_as()
        self.group = None if self.user is None else pwd.getpwnam(self.user).pw_gid
        # Not pytest's tmp_path: its 0700 root-owned parents would lock the postgres user out.
        self.root = Path(tempfile.mkdtemp(prefix="kmsgate-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.root / "postgres.log"
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._as_user(["mkdir", "-p", str(self.sockets)])
        self._as_user(
            [
                str(bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                "--auth=trust",  # loopback and a private socket dir only
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )

    def _as_user(self, argv: list[str]) -> None:
        out = subprocess.run(
            argv, capture_output=True, text=True, check=False, user=self.user, group=self.group
        )
        if out.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({out.returncode}): {out.stderr or out.stdout}")

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        """A plain postgresql:// URL for the store (trust auth ignores any password)."""
        auth = SUPERUSER if password is None else f"{SUPERUSER}:{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        if self.process is not None:
            return
        argv = [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        argv += ["-k", str(self.sockets), "-c", "listen_addresses=127.0.0.1"]
        for setting in self.settings:
            argv += ["-c", setting]
        with self.log.open("ab") as log:
            # user=/group=: setuid in the child before exec, so our pid *is* postgres and
            # signals reach it directly (runuser would sit in between and swallow SIGINT).
            self.process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                user=self.user,
                group=self.group,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                raise RuntimeError(f"postgres exited at start:\n{self.log.read_text()[-2000:]}")
            if self._ready():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("postgres did not become ready in time")

    def _ready(self) -> bool:
        out = subprocess.run(
            [str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
            check=False,
        )
        return out.returncode == 0

    def stop(self) -> None:
        """Fast shutdown (SIGINT), SIGKILL if it does not go."""
        process, self.process = self.process, None
        if process is None:
            return
        # SIGINT is postgres' "fast" shutdown: end sessions, checkpoint, exit.
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over TCP; returns unaligned output."""
        out = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr}")
        return out.stdout

    def create_database(self, name: str, template: str | None = None) -> str:
        """CREATE DATABASE (optionally from a template); returns its URL."""
        clause = f" TEMPLATE {template}" if template else ""
        self.psql(f'CREATE DATABASE "{name}"{clause}')
        return self.url(name)

    def cleanup(self) -> None:
        """Stop and delete the data directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_postgres(settings: tuple[str, ...] = FAST_SETTINGS) -> Iterator[PostgresServer]:
    """A started server for the duration of the block."""
    server = PostgresServer(require_bindir(), settings=settings)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
