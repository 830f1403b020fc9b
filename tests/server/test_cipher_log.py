"""The start-up log of a real `kmsgate serve` names the block-cipher path it runs."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kmsgate import _native
from tests.server.test_serve_cli import KMSGATE
from tests.support.kms import activate_once
from tests.support.ports import free_port

pytestmark = [pytest.mark.timeout(120), pytest.mark.integration]


def test_the_c_accelerator_is_built_for_the_stable_abi() -> None:
    spec = importlib.util.find_spec("kmsgate.protocol._cipher")
    assert spec is not None and spec.origin is not None, "the C accelerator was not built"
    assert spec.origin.endswith(".abi3.so"), spec.origin


def _serve_and_read_cipher_line(
    tmp_path: Path, pure_python: bool, topic: str = "cipher:", switch: str = "CIPHER"
) -> str:
    """Start `kmsgate serve`, activate once through it, and return its `topic` log line;
    `pure_python` sets KMSGATE_PURE_PYTHON_<switch>=1."""
    variable = f"KMSGATE_PURE_PYTHON_{switch}"
    env = {k: v for k, v in os.environ.items() if k != variable}
    if pure_python:
        env[variable] = "1"
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(KMSGATE), "serve", "--no-web", "--no-store", "--log-level", "info",
             "--data-dir", str(tmp_path / "data"), "--listen", f"127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while "cipher:" not in log_path.read_text():
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)
            # The path it names is the one that serves: an activation must verify.
            assert asyncio.run(activate_once(port)).ok
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    [line] = [line for line in log_path.read_text().splitlines() if topic in line]
    return line


def test_serve_logs_the_c_accelerator(tmp_path: Path) -> None:
    line = _serve_and_read_cipher_line(tmp_path, pure_python=False)
    assert re.search(r"cipher: C accelerator \(abi3, (aes-ni|tables) rounds\)$", line), line


def test_serve_logs_the_compiled_hot_path(tmp_path: Path) -> None:
    # scripts/test installs with mypyc: the host that serves is the compiled one.
    line = _serve_and_read_cipher_line(tmp_path, pure_python=False, topic="hot path:")
    listed = _native.listed_modules(Path(_native.__file__).parent / "native_modules.txt")
    assert line.endswith(f"hot path: compiled (mypyc): {len(listed)} modules"), line


def test_serve_logs_the_pure_python_cipher_when_asked(tmp_path: Path) -> None:
    line = _serve_and_read_cipher_line(tmp_path, pure_python=True)
    assert line.endswith("cipher: pure Python (KMSGATE_PURE_PYTHON_CIPHER=1)"), line


def test_serve_logs_the_c_wire_layout(tmp_path: Path) -> None:
    line = _serve_and_read_cipher_line(tmp_path, pure_python=False, topic="wire layout:")
    assert line.endswith("wire layout: C (abi3)"), line


def test_a_host_without_the_c_wire_layout_still_activates(tmp_path: Path) -> None:
    line = _serve_and_read_cipher_line(tmp_path, True, topic="wire layout:", switch="WIRE")
    assert line.endswith("wire layout: Python (KMSGATE_PURE_PYTHON_WIRE=1)"), line
