"""`kmsgate client`: human and JSON output, exit codes, discovery via knotd, load smoke test."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kmsgate.cli import create_app
from kmsgate.cli.client import DEFAULT_SKU, parse_target
from kmsgate.config.settings import ServeSettings
from kmsgate.protocol.engine import KmsEngine
from kmsgate.protocol.hresult import HResult
from kmsgate.protocol.messages import KmsRequest
from kmsgate.server.host import KmsHost, ipv6_available
from tests.support.dns_server import knot_server
from tests.support.ports import closed_port

pytestmark = pytest.mark.integration

app = create_app()

LOOPBACK = "127.0.0.1"
EPID = "03612-00206-556-123727-03-1033-17763.0000-2972018"
OFFICE_2013_PLUS = "0ff1ce15-a989-479d-af46-f275c6370663"
V6_CHECKS = [
    "version",
    "time_stamp",
    "client_machine_id",
    "client_count",
    "hash",
    "ivs",
    "iv_not_suspicious",
    "hmac",
    "size",
]
KMSGATE = Path(sys.executable).with_name("kmsgate")


class ThreadedHost:
    """Our host on its own event loop in a thread, so the CLI can run its own loop."""

    def __init__(
        self,
        configure: Callable[[KmsHost], None] | None = None,
        listen: str = f"{LOOPBACK}:0",
        **settings: Any,
    ) -> None:
        self.settings = ServeSettings(listen=[listen], **settings)
        self.configure = configure
        self.host: KmsHost | None = None
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            async with KmsHost(self.settings) as host:
                if self.configure is not None:
                    self.configure(host)
                self.host, self.port = host, host.port
                self._ready.set()
                await self._stop.wait()
        except OSError as exc:  # reported to the test thread below
            self._error = exc
            self._ready.set()

    def __enter__(self) -> ThreadedHost:
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"host did not start: {self._error!r}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    @property
    def stats(self) -> Any:
        assert self.host is not None
        return self.host.stats


def refuse_office(host: KmsHost) -> None:
    def policy(request: KmsRequest) -> HResult | None:
        office = str(request.application_id) == OFFICE_2013_PLUS
        return HResult.PRODUCT_NOT_ALLOWED if office else None

    host.engine = KmsEngine(host.engine.config, host.identity.provider, policy)


@pytest.fixture(scope="module")
def host() -> Iterator[ThreadedHost]:
    with ThreadedHost(refuse_office, epid=EPID, hwid="3A1C049600B60076") as running:
        yield running


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    runner = CliRunner(env=env)
    return runner.invoke(app, ["client", *args], catch_exceptions=False)


# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kms.example.com", ("kms.example.com", 1688)),
        ("kms.example.com:11688", ("kms.example.com", 11688)),
        ("127.0.0.1:1688", ("127.0.0.1", 1688)),
        ("[::1]:1689", ("::1", 1689)),
        ("[::1]", ("::1", 1688)),
        ("::1", ("::1", 1688)),
        ("fe80::1%eth0", ("fe80::1%eth0", 1688)),
    ],
)
def test_parse_target(text: str, expected: tuple[str, int]) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize("text", ["host:", "host:0", "host:65536", "[::1]x", "[::1]:", ":1688"])
def test_parse_target_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_target(text)


def test_human_output(host: ThreadedHost) -> None:
    result = invoke(f"{LOOPBACK}:{host.port}")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert EPID in out
    assert "3A1C049600B60076" in out
    assert "Windows 10/11 Pro" in out  # the documented default product
    for name in V6_CHECKS:
        assert f"✓ {name}" in out
    assert "✗" not in out
    assert "count      50 (N-count 25)" in out
    assert "activation 120 min, renewal 10080 min" in out
    assert result.stderr == ""


def test_json_output_has_every_request_field_and_check(host: ThreadedHost) -> None:
    cmid = "5d7f9b13-c4e6-4081-8c2d-3e4f5a6b7c8d"
    result = invoke(
        f"{LOOPBACK}:{host.port}",
        "--product",
        "Windows Server 2022 Standard",
        "--cmid",
        cmid,
        "--machine-name",
        "srv.example.test",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is True and doc["error"] is None
    assert doc["product"]["name"] == "Windows Server 2022 Standard"
    assert doc["target"] == {
        "host": LOOPBACK,
        "port": host.port,
        "discovered_via": None,
        "candidates": [],
        "unreachable": [],
    }
    (req,) = doc["requests"]
    assert req["call_id"] == 2 and req["syntax"] == "NDR32"
    assert req["request"]["client_machine_id"] == cmid
    assert req["request"]["machine_name"] == "srv.example.test"
    assert req["request"]["required_client_count"] == 5
    assert req["request"]["version"] == "6.0"
    assert len(bytes.fromhex(req["request_message"])) == 260
    assert req["response"]["epid"] == EPID
    assert req["response"]["client_machine_id"] == cmid
    assert req["response"]["current_client_count"] == 10
    assert req["response"]["hwid"] == "3A1C049600B60076"
    assert [c["name"] for c in req["checks"]] == V6_CHECKS
    assert all(c["passed"] for c in req["checks"])
    assert req["latency_ms"] > 0 and req["connect_latency_ms"] > 0


def test_count_three_on_one_connection(host: ThreadedHost) -> None:
    before = host.stats.connections_accepted
    result = invoke(f"{LOOPBACK}:{host.port}", "--count", "3", "--json")
    assert result.exit_code == 0, result.stderr
    requests = json.loads(result.stdout)["requests"]
    assert [r["call_id"] for r in requests] == [2, 3, 4]
    assert [r["syntax"] for r in requests] == ["NDR32", "NDR64", "NDR64"]
    assert host.stats.connections_accepted == before + 1


def test_fresh_connections_and_no_ndr64(host: ThreadedHost) -> None:
    before = host.stats.connections_accepted
    result = invoke(
        f"{LOOPBACK}:{host.port}", "--count", "2", "--fresh-connections", "--no-ndr64", "--json"
    )
    assert result.exit_code == 0, result.stderr
    requests = json.loads(result.stdout)["requests"]
    assert [(r["call_id"], r["syntax"]) for r in requests] == [(2, "NDR32"), (2, "NDR32")]
    assert host.stats.connections_accepted == before + 2


@pytest.mark.parametrize(("protocol", "size"), [("4", 252), ("5", 260)])
def test_protocol_override(host: ThreadedHost, protocol: str, size: int) -> None:
    result = invoke(f"{LOOPBACK}:{host.port}", "--protocol", protocol, "--json")
    assert result.exit_code == 0, result.stderr
    (req,) = json.loads(result.stdout)["requests"]
    assert req["request"]["version"] == f"{protocol}.0"
    assert len(bytes.fromhex(req["request_message"])) == size
    assert req["response"]["hwid"] is None


def test_sku_option(host: ThreadedHost) -> None:
    result = invoke(f"{LOOPBACK}:{host.port}", "--sku", str(DEFAULT_SKU), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["product"]["sku_id"] == str(DEFAULT_SKU)


def test_refused_product(host: ThreadedHost) -> None:
    result = invoke(f"{LOOPBACK}:{host.port}", "--product", "Office Professional Plus 2019")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: host returned 0xC004F042 (the KMS host cannot activate this product)"
    )
    result = invoke(
        f"{LOOPBACK}:{host.port}", "--product", "Office Professional Plus 2019", "--json"
    )
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["requests"] == []
    assert doc["error"]["hresult"] == "0xC004F042"


def test_closed_port() -> None:
    port = closed_port()
    result = invoke(f"{LOOPBACK}:{port}", "--timeout", "2")
    assert result.exit_code == 3
    assert result.stderr.startswith(
        f"error: cannot connect to {LOOPBACK}:{port}: connection refused"
    )
    assert "0x800706BA" in result.stderr


def test_failed_check_is_reported() -> None:
    with ThreadedHost(client_count=3) as low:
        result = invoke(f"{LOOPBACK}:{low.port}", "--json")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: check client_count failed: count 3 below N 25")
    doc = json.loads(result.stdout)
    (req,) = doc["requests"]
    failed = [c["name"] for c in req["checks"] if not c["passed"]]
    assert failed == ["client_count"]
    assert doc["error"]["check"] == "client_count"


@pytest.mark.parametrize(
    "args",
    [
        ["--product", "no such product at all"],
        ["--sku", "not-a-guid"],
        ["--sku", "00000000-0000-0000-0000-000000000001"],
        ["--product", "Windows 10/11 Pro", "--sku", str(DEFAULT_SKU)],
        ["--protocol", "7"],
        ["--cmid", "xyz"],
        ["--machine-name", "m" * 70],
        ["[::1"],
    ],
)
def test_usage_errors(args: list[str]) -> None:
    target = [] if args[0].startswith("[") else [f"{LOOPBACK}:1"]
    result = invoke(*target, *args)
    assert result.exit_code == 2


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback on this machine")
def test_ipv6_host_syntax() -> None:
    with ThreadedHost(listen="[::1]:0") as v6:
        result = invoke(f"[::1]:{v6.port}", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["target"]["host"] == "::1"


def test_load_smoke(host: ThreadedHost) -> None:
    before = host.stats.activations
    result = invoke(f"{LOOPBACK}:{host.port}", "--load", "200", "--concurrency", "8", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["attempted"], doc["succeeded"], doc["failed"]) == (200, 200, 0)
    assert doc["connections"] == 200 and doc["errors"] == {}
    # The host counts an activation right after writing its answer, in its own thread.
    deadline = time.monotonic() + 5
    while host.stats.activations < before + 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert host.stats.activations == before + 200
    # Several requests per connection, human output.
    result = invoke(
        f"{LOOPBACK}:{host.port}", "--load", "60", "--concurrency", "3", "--count", "10"
    )
    assert result.exit_code == 0, result.stderr
    assert "60/60" in result.stdout and "up to 10 requests per connection" in result.stdout


def test_load_failures_exit_non_zero(host: ThreadedHost) -> None:
    result = invoke(
        f"{LOOPBACK}:{host.port}", "--product", "Office Professional Plus 2019", "--load", "20"
    )
    assert result.exit_code == 1
    assert "20 of 20 activations failed (20 × hresult 0xC004F042)" in result.stderr


# ---------------------------------------------------------------------------------------
# DNS discovery through a real knotd
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def knot(tmp_path_factory: pytest.TempPathFactory, host: ThreadedHost) -> Iterator[Any]:
    dead = closed_port()
    zones = {
        # The preferred record points at a dead port; the client must fall back.
        "kms.test": (
            f"_vlmcs._tcp IN SRV 0 0 {dead} dead.kms.test.\n"
            f"_vlmcs._tcp IN SRV 10 0 {host.port} kms1.kms.test.\n"
            "dead IN A 127.0.0.1\n"
            "kms1 IN A 127.0.0.1\n"
        ),
        "empty.test": "",
        "alldead.test": f"_vlmcs._tcp IN SRV 0 0 {dead} 127.0.0.1.\n",
    }
    with knot_server(tmp_path_factory.mktemp("knot-cli"), zones) as server:
        server.dead_port = dead  # type: ignore[attr-defined]
        yield server


def test_discovery_falls_back_to_the_next_srv_record(knot: Any, host: ThreadedHost) -> None:
    env = {"KMSGATE_CLIENT_DNS_SERVER": f"{knot.address}:{knot.port}"}
    result = invoke("--domain", "kms.test", "--json", env=env)
    assert result.exit_code == 0, result.stderr
    target = json.loads(result.stdout)["target"]
    assert (target["host"], target["port"]) == (LOOPBACK, host.port)
    assert target["discovered_via"] == "_vlmcs._tcp.kms.test"
    assert [(c["host"], c["port"]) for c in target["candidates"]] == [
        ("dead.kms.test", knot.dead_port),
        ("kms1.kms.test", host.port),
    ]
    assert [u["endpoint"] for u in target["unreachable"]] == [f"{LOOPBACK}:{knot.dead_port}"]
    # vlmcs syntax: ".domain" as the target; human output names the discovery.
    result = invoke(".kms.test", env=env)
    assert result.exit_code == 0, result.stderr
    assert "_vlmcs._tcp.kms.test" in result.stdout and EPID in result.stdout


def test_discovery_without_records(knot: Any) -> None:
    env = {"KMSGATE_CLIENT_DNS_SERVER": f"{knot.address}:{knot.port}"}
    result = invoke("--domain", "empty.test", env=env)
    assert result.exit_code == 3
    assert result.stderr.startswith("error: no KMS host found via DNS SRV")
    assert "_vlmcs._tcp.empty.test." in result.stderr


def test_discovery_when_no_candidate_answers(knot: Any) -> None:
    env = {"KMSGATE_CLIENT_DNS_SERVER": f"{knot.address}:{knot.port}"}
    result = invoke("--domain", "alldead.test", "--timeout", "2", "--json", env=env)
    assert result.exit_code == 3
    assert result.stderr.startswith("error: no KMS host answered")
    assert "0xC004F074" in result.stderr
    doc = json.loads(result.stdout)
    assert [u["endpoint"] for u in doc["target"]["unreachable"]] == [f"{LOOPBACK}:{knot.dead_port}"]


# ---------------------------------------------------------------------------------------
# The real processes: `kmsgate serve` and `kmsgate client`
# ---------------------------------------------------------------------------------------


@contextmanager
def serve_process(port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMSGATE_")}
    proc = subprocess.Popen(
        [
            str(KMSGATE),
            "serve",
            "--listen",
            f"{LOOPBACK}:{port}",
            "--log-level",
            "warning",
            "--no-store",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None:
            with socket.socket() as sock:
                if sock.connect_ex((LOOPBACK, port)) == 0:
                    break
            time.sleep(0.05)
        else:
            raise AssertionError("kmsgate serve did not start listening")
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def test_console_script_against_serve_process() -> None:
    port = closed_port()
    with serve_process(port):
        done = subprocess.run(
            [str(KMSGATE), "client", f"{LOOPBACK}:{port}", "--count", "2", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["ok"] and len(doc["requests"]) == 2
