"""The campus scenario with real processes: portal login in Chromium, then `kmsgate client`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.server.test_serve_cli import KMSGATE, wait_listening
from tests.support.browser import chromium_browser
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

PASSWORD = "Campus-Pass-42"


def kmsgate(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KMSGATE), *args], input=stdin, capture_output=True, text=True, timeout=60,
        env={**os.environ, "KMSGATE_LOG_LEVEL": "warning"},
    )  # fmt: skip


def activate(port: int) -> subprocess.CompletedProcess[str]:
    return kmsgate(
        "client", f"127.0.0.1:{port}", "--product", "Windows 10/11 Pro", "--timeout", "5"
    )


def test_portal_login_in_chromium_opens_exactly_one_activation(tmp_path: Path) -> None:
    kms_port, web_port = free_port(), free_port()
    store = ["--data-dir", str(tmp_path)]
    added = kmsgate("users", "add", "student1", "--password-stdin", *store, stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    proc = subprocess.Popen(
        [str(KMSGATE), "serve", "--gateway", "--listen", f"127.0.0.1:{kms_port}",
         "--web", f"127.0.0.1:{web_port}", "--quota-week", "5", *store],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_listening(proc, kms_port)
        wait_listening(proc, web_port)
        before = activate(kms_port)
        assert before.returncode != 0  # refused: nobody logged in from here yet

        with chromium_browser() as browser:
            page = browser.new_page(base_url=f"http://127.0.0.1:{web_port}")
            page.set_default_timeout(10_000)
            page.goto("/")
            page.get_by_label("User name").fill("student1")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in and activate").click()
            page.get_by_role("heading", name="Activate now").wait_for()
            page.close()

        first = activate(kms_port)
        assert first.returncode == 0, first.stdout + first.stderr
        second = activate(kms_port)
        assert second.returncode != 0  # the window served once
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out

    trail = kmsgate("audit", "--json", "--limit", "50", *store)
    events = list(reversed(json.loads(trail.stdout)["items"]))
    kinds = [e["kind"] for e in events]
    # Refused connections are counted per source and minute: the two refused activations and
    # wait_listening's probe of the KMS port (a connection without a window, too).
    assert sum(e["count"] for e in events if e["kind"] == "connection_refused") == 3
    linked = [e for e in events if e["kind"] == "activation"]
    assert len(linked) == 1
    activation = linked[0]
    assert activation["username"] == "student1" and activation["address"] == "127.0.0.1"
    assert activation["product"] == "Windows 10/11 Pro" and activation["cmid"]
    order = [
        k for k in kinds if k in ("login_ok", "window_granted", "window_consumed", "activation")
    ]
    assert order == ["login_ok", "window_granted", "window_consumed", "activation"]
