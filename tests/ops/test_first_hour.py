"""An admin's first hour with a real `kmsgate serve`: the first-admin hint and gateway refusals."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.ports import free_port

pytestmark = pytest.mark.integration

KMSGATE = Path(sys.executable).parent / "kmsgate"
HINT_LINE = re.compile(
    r"WARNING.*no administrator account yet: create one with `kmsgate users add NAME --admin`"
)
PAGE_HINT = "No administrator account exists yet."


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("KMSGATE_", "NOTIFY_"))}


@contextmanager
def serving(data: Path, log: Path, *args: str) -> Iterator[tuple[int, str]]:
    """A real `kmsgate serve` on loopback until the block ends: (KMS port, web base URL)."""
    port, web = free_port(), free_port()
    command = [str(KMSGATE), "serve", "--listen", f"127.0.0.1:{port}",
               "--web", f"127.0.0.1:{web}", "--data-dir", str(data), *args]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=clean_env(), stdout=out, stderr=out)
    base = f"http://127.0.0.1:{web}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "no /healthz within 60 s"
            time.sleep(0.1)
        yield port, base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()[-3000:]


def add_admin(data: Path, name: str, password: str) -> None:
    made = subprocess.run(
        [str(KMSGATE), "users", "add", name, "--admin", "--password-stdin", "--data-dir",
         str(data)],
        input=f"{password}\n", env=clean_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr


def log_in(client: httpx.Client, name: str, password: str) -> None:
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token, form.text[:500]
    done = client.post(
        "/login",
        data={"username": name, "password": password, "csrf_token": token[1], "next": "/"},
    )
    assert done.status_code == 303, done.text[:500]


def refused_by_the_gateway(port: int) -> None:
    """A KMS client without a login: the gateway closes the connection unanswered."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert sock.recv(1024) == b""


@pytest.mark.timeout(240)
def test_first_admin_hint_then_gateway_refusals_on_the_dashboard(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "serve.log"
    with serving(data, log, "--gateway") as (port, base):
        lines = log.read_text().splitlines()
        assert len([line for line in lines if HINT_LINE.search(line)]) == 1, lines
        with httpx.Client(base_url=base, timeout=10) as browser:
            login_page = browser.get("/login").text
            assert PAGE_HINT in login_page and "kmsgate users add NAME --admin" in login_page
            assert "Administrators of" not in login_page

            add_admin(data, "boss", "boss-password-1")
            login_page = browser.get("/login").text
            assert PAGE_HINT not in login_page and "users add" not in login_page

            for _ in range(3):
                refused_by_the_gateway(port)
            log_in(browser, "boss", "boss-password-1")
            # Refusals are audited per source and minute, once the minute is over: wait
            # (bounded) for the tile to show all three.
            deadline = time.monotonic() + 90
            while True:
                overview = browser.get("/dashboard").text
                tile = overview.split('<span class="label">Refusals</span>', 1)[1]
                value = re.match(r'<span class="value[^"]*">([^<]+)<', tile)
                assert value, tile[:300]
                if value[1] == "3":
                    break
                assert time.monotonic() < deadline, f"Refusals tile says {value[1]}"
                time.sleep(0.2)
            assert "0 KMS" in tile and "3 without a window" in tile.split("</div>", 1)[0]

    # With an administrator in place, the next start says nothing about it.
    with serving(data, tmp_path / "again.log", "--gateway"):
        pass
    assert not HINT_LINE.search((tmp_path / "again.log").read_text())


@pytest.mark.parametrize("flag", ["--no-web", "--no-store"])
def test_no_hint_without_a_dashboard(tmp_path: Path, flag: str) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(KMSGATE), "serve", "--listen", f"127.0.0.1:{port}", flag,
             "--data-dir", str(tmp_path / "data")],
            env=clean_env(), stdout=out, stderr=out,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "listening on" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0
    assert "administrator" not in log.read_text()
