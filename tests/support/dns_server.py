"""A real authoritative DNS server (Knot DNS) on loopback, for tests.

``KnotServer`` writes a throw-away configuration, zone files, database and rundir
under a temporary directory, starts ``knotd`` on ``127.0.0.1:<free port>``, waits until
every zone answers, and stops the process again. A TSIG key is always configured and
every zone accepts RFC 2136 dynamic updates signed with it (``server.tsig``), so the
same fixture serves later ``dns publish`` tests.

If ``knotd`` is missing the test fails, unless ``KMSGATE_ALLOW_SKIP=1`` is set.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import pytest

from tests.support.ports import free_port

LOOPBACK = "127.0.0.1"
_START_ATTEMPTS = 3  # a fresh port is chosen on each attempt (another process may grab one)
_READY_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0

#: Zone body template; ``{origin}`` is filled in. SOA/NS/glue every zone needs.
ZONE_HEADER = """\
$ORIGIN {origin}.
$TTL 300
@   IN SOA ns1.{origin}. hostmaster.{origin}. 1 3600 600 86400 60
@   IN NS  ns1.{origin}.
ns1 IN A   127.0.0.1
"""


def find_knotd() -> str | None:
    """Path of the knotd binary (also looks in sbin, which non-root PATHs omit)."""
    extra = os.pathsep.join(["/usr/sbin", "/sbin", "/usr/local/sbin"])
    return shutil.which("knotd", path=os.environ.get("PATH", "") + os.pathsep + extra)


def require_knotd() -> str:
    """Return knotd's path, or fail the test (skip only with KMSGATE_ALLOW_SKIP=1)."""
    path = find_knotd()
    if path is not None:
        return path
    message = "knotd (Debian package 'knot') is not installed; the DNS tests need it"
    if os.environ.get("KMSGATE_ALLOW_SKIP") == "1":
        pytest.skip(message)
    pytest.fail(message)


@dataclass(frozen=True)
class TsigKey:
    """A TSIG key as knot and dnspython both need it."""

    name: str  # absolute, with trailing dot
    secret: str  # base64
    algorithm: str  # knot spelling, e.g. "hmac-sha256"

    @classmethod
    def generate(cls, name: str = "kmsgate-test-key.", algorithm: str = "hmac-sha256") -> TsigKey:
        secret = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
        return cls(name=name, secret=secret, algorithm=algorithm)

    def dnspython_key(self) -> dns.tsig.Key:
        """The key as dnspython wants it (usable as a ``keyring``)."""
        return dns.tsig.Key(self.name, self.secret, self.algorithm + ".")


class KnotServer:
    """knotd serving ``zones`` (origin -> records below the SOA/NS header)."""

    def __init__(
        self,
        workdir: Path,
        zones: Mapping[str, str],
        *,
        tsig: TsigKey | None = None,
    ) -> None:
        self.workdir = workdir
        self.zones = {origin.rstrip("."): body for origin, body in zones.items()}
        self.tsig = tsig or TsigKey.generate()
        self.address = LOOPBACK
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._knotd = require_knotd()

    # -- configuration -------------------------------------------------------------

    def _config_text(self) -> str:
        zone_entries = "".join(
            f"  - domain: {origin}\n    file: {self._zone_path(origin)}\n    acl: tsig-update\n"
            for origin in self.zones
        )
        return f"""\
server:
    rundir: "{self.workdir / "run"}"
    listen: {self.address}@{self.port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1

log:
  - target: stderr
    any: info

database:
    storage: "{self.workdir / "db"}"

key:
  - id: {self.tsig.name}
    algorithm: {self.tsig.algorithm}
    secret: {self.tsig.secret}

acl:
  - id: tsig-update
    key: {self.tsig.name}
    action: update

template:
  - id: default
    storage: "{self.workdir / "zones"}"
    zonefile-sync: -1
    semantic-checks: on

zone:
{zone_entries}"""

    def _zone_path(self, origin: str) -> Path:
        return self.workdir / "zones" / f"{origin}.zone"

    def _write_files(self) -> Path:
        for sub in ("run", "db", "zones"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        for origin, body in self.zones.items():
            text = ZONE_HEADER.format(origin=origin) + body
            self._zone_path(origin).write_text(text, encoding="utf-8")
        config = self.workdir / "knot.conf"
        config.write_text(self._config_text(), encoding="utf-8")
        return config

    # -- lifecycle -----------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.workdir / "knotd.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def start(self) -> None:
        last_error = ""
        for _ in range(_START_ATTEMPTS):
            self.port = free_port(udp=True)
            config = self._write_files()
            with self.log_path.open("wb") as log:
                self._proc = subprocess.Popen(
                    [self._knotd, "--config", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_ready():
                return
            exited = self._proc is not None and self._proc.poll() is not None
            last_error = self.log_text()
            self.stop()
            if exited and "address already in use" not in last_error.lower():
                break  # a configuration or zone error: retrying on another port won't help
        raise RuntimeError(f"knotd did not become ready; log:\n{last_error}")

    def _zone_answers(self, origin: str) -> bool:
        query = dns.message.make_query(origin + ".", dns.rdatatype.SOA)
        try:
            response = dns.query.udp(query, self.address, port=self.port, timeout=0.2)
        except (dns.exception.DNSException, OSError):
            return False
        return response.rcode() == dns.rcode.NOERROR and bool(response.answer)

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + _READY_TIMEOUT
        pending = list(self.zones)
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            pending = [origin for origin in pending if not self._zone_answers(origin)]
            if not pending:
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=_STOP_TIMEOUT)

    def __enter__(self) -> KnotServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- clients -------------------------------------------------------------------

    def resolver(
        self, search: Sequence[str] = (), *, lifetime: float = 3.0
    ) -> dns.asyncresolver.Resolver:
        """An async resolver that asks only this server (never /etc/resolv.conf)."""
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [self.address]
        resolver.port = self.port
        resolver.search = [dns.name.from_text(name) for name in search]
        resolver.domain = dns.name.root
        resolver.timeout = min(1.0, lifetime)
        resolver.lifetime = lifetime
        resolver.cache = None
        return resolver


@contextmanager
def knot_server(
    workdir: Path, zones: Mapping[str, str], *, tsig: TsigKey | None = None
) -> Iterator[KnotServer]:
    """Context manager form, convenient in pytest fixtures."""
    server = KnotServer(workdir, zones, tsig=tsig)
    server.start()
    try:
        yield server
    finally:
        server.stop()
