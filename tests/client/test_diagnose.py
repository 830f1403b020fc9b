"""`kmsgate diagnose` against real processes: a kmsgate host, its web port, closed and silent
ports, a host closing connections, DNS records served by knotd; plus the pure steps."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from kmsgate.catalog import default_catalog
from kmsgate.cli import create_app
from kmsgate.client.diagnose import diagnose_cmid
from kmsgate.client.diagnose_clock import COARSE_SHIFTS, probe_clock
from kmsgate.client.diagnose_report import EXIT_CODES, SCHEMA, STEPS
from kmsgate.client.diagnose_rpc import classify_non_rpc
from kmsgate.protocol.epid import parse_epid
from kmsgate.protocol.hresult import KMS_HRESULTS, HResult, describe, explain, markdown_table
from kmsgate.store.database import Store
from tests.support.dns_server import knot_server
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

app = create_app()

LOOPBACK = "127.0.0.1"
KMSGATE = Path(sys.executable).with_name("kmsgate")
# vlmcsd's default Office 2019 ePID: its host key covers Office 2019, not Windows.
EPID = "03612-00206-684-137669-03-1033-17763.0000-2972018"
HWID = "3A1C049600B60076"
SKEW = 4 * 3600
REFUSED_PRODUCT = "Office LTSC Professional Plus 2021"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md"


def wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early: {log.read_text()}")
        with socket.socket() as sock:
            if sock.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"serve did not listen on {port}: {log.read_text()}")


@dataclass
class Serve:
    """A running `kmsgate serve`."""

    port: int
    web_port: int | None
    data_dir: Path


@contextmanager
def serve(workdir: Path, *args: str, web: bool = False) -> Iterator[Serve]:
    port, web_port = free_port(), free_port() if web else None
    log = workdir / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMSGATE_")}
    argv = [str(KMSGATE), "serve", "--listen", f"{LOOPBACK}:{port}", "--log-level", "warning"]
    if web_port is None:
        argv.append("--no-store")
    else:
        argv += ["--web", f"{LOOPBACK}:{web_port}", "--data-dir", str(workdir)]
        argv += ["--store-writer", "inline", "--store-flush-interval", "0.05"]
    with log.open("wb") as out:
        proc = subprocess.Popen([*argv, *args], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_listening(proc, port, log)
        if web_port is not None:
            wait_listening(proc, web_port, log)
        yield Serve(port, web_port, workdir)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """kmsgate with a 4-hour clock check, Office LTSC refused, a fixed HWID, store and web."""
    with serve(
        tmp_path_factory.mktemp("diagnose-host"),
        "--max-clock-skew", str(SKEW),
        "--deny-product", "Office LTSC*",
        "--hwid", HWID,
        web=True,
    ) as running:  # fmt: skip
        yield running


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner(env=env).invoke(app, ["diagnose", *args], catch_exceptions=False)
    return result.exit_code, result.stdout


def run_json(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    code, out = run(*args, "--json", env=env)
    doc = json.loads(out)
    assert doc["exit_code"] == code
    return code, doc


def steps(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for finding in doc["findings"]:
        found.setdefault(finding["step"], []).append(finding)
    return found


def statuses(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f["step"], f["status"]) for f in doc["findings"]]


def requests_recorded(serve_: Serve) -> int:
    """How many requests the host recorded from this machine's diagnose CMID."""

    async def read() -> int:
        store = await Store.open(f"sqlite:///{serve_.data_dir / 'kmsgate.db'}", upgrade=False)
        try:
            row = await store.get_client(diagnose_cmid(socket.gethostname()))
            return 0 if row is None else row.request_count
        finally:
            await store.close()

    return asyncio.run(read())


def settled_count(serve_: Serve, at_least: int = 0) -> int:
    """The recorded count once it reached `at_least` and stayed put for 0.5 s (bounded)."""
    deadline = time.monotonic() + 15
    count, stable_since = requests_recorded(serve_), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = requests_recorded(serve_)
        if now != count:
            count, stable_since = now, time.monotonic()
        elif count >= at_least and time.monotonic() - stable_since >= 0.5:
            break
    return count


# --------------------------------------------------------------------------- the host


def test_healthy_host(host: Serve) -> None:
    catalog = default_catalog()
    code, doc = run_json(f"{LOOPBACK}:{host.port}")
    assert code == 0
    assert doc["schema"] == SCHEMA and doc["ok"] is True
    assert doc["target"] == f"{LOOPBACK}:{host.port}"
    assert doc["product"]["name"] == "Windows 10/11 Pro" and doc["product"]["n_count"] == 25
    assert statuses(doc) == [
        ("dns", "skipped"),
        ("tcp", "ok"),
        ("rpc", "ok"),
        ("answer", "ok"),
        ("identity", "ok"),
        ("policy", "ok"),
        ("count", "ok"),
        ("clock", "ok"),
    ]
    found = steps(doc)
    assert found["rpc"][0]["details"] == {"ndr32": True, "ndr64": True, "btfn": 3, "warnings": []}
    answer = found["answer"][0]["details"]
    assert answer["protocol"] == "6.0" and all(answer["checks"].values())
    assert (answer["activation_interval"], answer["renewal_interval"]) == (120, 10080)
    assert answer["machine_name"] == "kmsgate-diagnose"
    identity = found["identity"][0]["details"]
    epid = parse_epid(identity["epid"])  # kmsgate's own ePID: one that fits the product
    build = catalog.host_build(epid.build)
    assert build is not None and identity["host_os"] == build.name
    assert (identity["group_id"], identity["key_id"], identity["host_build"]) == (
        epid.group_id,
        epid.key_id,
        epid.build,
    )
    assert identity["hwid"] == HWID and identity["activation_date"] == str(epid.activation_date)
    covering = [
        c.name
        for c in catalog.csvlks
        if c.group_id == epid.group_id
        and c.has_key_id(epid.key_id)
        and catalog.resolve_product("Windows 10/11 Pro").kms_id in c.activates_kms_ids
    ]
    assert covering and set(covering) <= set(identity["csvlk"])
    assert found["count"][0]["details"] == {"current_client_count": 50, "required": 25}
    assert found["clock"][0]["hresult"] is None


def test_epid_that_does_not_fit_the_product(tmp_path: Path) -> None:
    """A fixed ePID of an Office 2019 host key, answering Windows 10/11 Pro: a warning."""
    with serve(tmp_path, "--epid", EPID) as fixed:
        code, doc = run_json(f"{LOOPBACK}:{fixed.port}")
        assert code == 1
        identity = steps(doc)["identity"][0]
        assert identity["status"] == "warning"
        assert identity["title"] == "host key Office 2019 VL on Windows 10 1809 / Server 2019"
        details = identity["details"]
        assert (details["group_id"], details["key_id"], details["lcid"]) == (206, 684137669, 1033)
        assert details["activation_date"] == "2018-10-24"
        assert "could not activate Windows 10/11 Pro" in identity["explanation"]
        # The same ePID fits a product its key covers.
        code, doc = run_json(
            f"{LOOPBACK}:{fixed.port}", "--product", "Office Professional Plus 2019"
        )
        assert code == 0 and steps(doc)["identity"][0]["status"] == "ok"


def test_client_count_below_the_n_count(tmp_path: Path) -> None:
    with serve(tmp_path, "--client-count", "5") as low:
        code, doc = run_json(f"{LOOPBACK}:{low.port}")
        assert code == EXIT_CODES["count"] == 9
        found = steps(doc)
        assert found["answer"][0]["status"] == "ok"  # the answer itself verifies
        count = found["count"][0]
        assert (count["status"], count["hresult"]) == ("error", "0xC004F038")
        assert count["title"] == "the host counts 5 client(s); this product needs 25"
        assert count["details"] == {"current_client_count": 5, "required": 25}
        # Office needs 5: the same host is enough for it.
        assert run_json(f"{LOOPBACK}:{low.port}", "--product", REFUSED_PRODUCT)[0] == 0


def test_human_output(host: Serve) -> None:
    code, out = run(f"{LOOPBACK}:{host.port}")
    assert code == 0
    assert f"Diagnosing {LOOPBACK}:{host.port} for Windows 10/11 Pro (N-count 25)" in out
    assert re.search(r"✓ tcp\s+127\.0\.0\.1:\d+ accepts TCP connections", out)
    assert "✓ count    the host counts 50 client(s); this product needs 25" in out
    assert "Everything checked is fine: this client can activate." in out


def test_console_script_against_the_host(host: Serve) -> None:
    done = subprocess.run(
        [str(KMSGATE), "diagnose", f"{LOOPBACK}:{host.port}", "--protocol", "4", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    answer = steps(json.loads(done.stdout))["answer"][0]
    assert answer["status"] == "ok" and answer["details"]["protocol"] == "4.0"


def test_refused_product(host: Serve) -> None:
    code, doc = run_json(f"{LOOPBACK}:{host.port}", "--product", REFUSED_PRODUCT)
    assert code == EXIT_CODES["policy"] == 7
    assert statuses(doc)[3:] == [
        ("answer", "error"),
        ("identity", "skipped"),
        ("policy", "error"),
        ("count", "skipped"),
        ("clock", "skipped"),
    ]
    policy = steps(doc)["policy"][0]
    info = explain(HResult.PRODUCT_NOT_ALLOWED)
    assert info is not None
    assert policy["hresult"] == "0xC004F042"
    assert policy["title"] == f"the host refuses {REFUSED_PRODUCT}: {describe(0xC004F042)}"
    assert (policy["explanation"], policy["fix"]) == (info.cause, info.fix)
    code, out = run(f"{LOOPBACK}:{host.port}", "--product", REFUSED_PRODUCT)
    assert code == 7 and "Activation fails at the policy step (exit 7)." in out


def test_skewed_clock_is_measured(host: Serve) -> None:
    before = settled_count(host)
    code, doc = run_json(f"{LOOPBACK}:{host.port}", "--clock-offset", str(6 * 3600))
    assert code == EXIT_CODES["clock"] == 8
    clock = steps(doc)["clock"][0]
    assert (clock["status"], clock["hresult"]) == ("error", "0xC004F06C")
    details = clock["details"]
    # This machine claims to be 6 h ahead: the host's clock is 6 h behind, and it allows 4 h.
    assert abs(details["host_offset_seconds"] + 6 * 3600) <= 120
    assert abs(details["tolerance_seconds"] - SKEW) <= 120
    assert "the host's clock is about 6 h" in clock["explanation"]
    assert "behind this machine's, and it allows 4 h of difference" in clock["explanation"]
    # Every probe is a real request the host recorded: the report hides none of them.
    assert settled_count(host, before + details["probes"] + 1) == before + details["probes"] + 1
    assert steps(doc)["answer"][0]["hresult"] == "0xC004F06C"


def test_skew_within_the_hosts_tolerance_is_fine(host: Serve) -> None:
    code, doc = run_json(f"{LOOPBACK}:{host.port}", "--clock-offset", "-3600")
    assert code == 0
    clock = steps(doc)["clock"][0]
    assert clock["status"] == "ok" and "shifted by -3600 s" in clock["title"]


def test_skew_without_probing_sends_one_request(host: Serve) -> None:
    before = settled_count(host)
    code, doc = run_json(
        f"{LOOPBACK}:{host.port}", "--clock-offset", str(-30 * 3600), "--no-clock-probe"
    )
    assert code == 8
    assert "probes" not in steps(doc)["clock"][0]["details"]
    assert settled_count(host, before + 1) == before + 1


def test_http_server_on_the_port(host: Serve) -> None:
    code, doc = run_json(f"{LOOPBACK}:{host.web_port}")
    assert code == EXIT_CODES["rpc"] == 5
    rpc = steps(doc)["rpc"][0]
    assert rpc["status"] == "error" and rpc["details"]["service"] == "http"
    assert "that port speaks HTTP, not KMS" in rpc["title"]
    assert rpc["hresult"] == "0x800706BA"
    assert [f["status"] for f in doc["findings"][3:]] == ["skipped"] * 5


def test_closed_port() -> None:
    port = free_port()
    code, doc = run_json(f"{LOOPBACK}:{port}")
    assert code == EXIT_CODES["tcp"] == 4
    tcp = steps(doc)["tcp"][0]
    assert tcp["title"] == f"{LOOPBACK}:{port}: connection refused"
    assert tcp["details"]["failure"] == "refused" and tcp["hresult"] == "0x800706BA"
    assert "nothing listens on that port" in tcp["explanation"]


def test_packets_dropped_silently() -> None:
    """A listener whose queue is full drops the SYN, as a silent firewall does."""
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        with socket.socket() as filler:
            filler.connect((LOOPBACK, port))  # takes the only place in the queue
            code, doc = run_json(f"{LOOPBACK}:{port}", "--timeout", "1")
    assert code == 4
    tcp = steps(doc)["tcp"][0]
    assert tcp["details"]["failure"] == "timeout"
    assert tcp["title"] == f"{LOOPBACK}:{port}: no answer within 1 s"
    assert "drops the packets silently" in tcp["explanation"]


def test_service_that_never_answers() -> None:
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(8)  # the kernel accepts; nobody reads or answers
        port = listener.getsockname()[1]
        code, doc = run_json(f"{LOOPBACK}:{port}", "--timeout", "1")
    assert code == 5
    rpc = steps(doc)["rpc"][0]
    assert rpc["title"] == f"{LOOPBACK}:{port} did not answer the RPC bind within 1 s"


def test_host_closing_connections_from_a_denied_address(tmp_path: Path) -> None:
    with serve(tmp_path, "--deny", "127.0.0.0/8") as denying:
        code, doc = run_json(f"{LOOPBACK}:{denying.port}")
    assert code == 5
    rpc = steps(doc)["rpc"][0]
    assert (
        rpc["title"]
        == f"{LOOPBACK}:{denying.port} closed the connection without answering the bind"
    )
    assert "source policy" in rpc["explanation"] and "gateway" in rpc["explanation"]


@pytest.mark.parametrize(
    "args",
    [
        ["127.0.0.1", "--domain", "example.org"],
        ["127.0.0.1:99999"],
        ["[::1"],
        ["127.0.0.1", "--product", "no such product at all"],
        ["127.0.0.1", "--protocol", "7"],
        ["127.0.0.1", "--dns-server", "not-an-address"],
        ["127.0.0.1", "--clock-offset", "1e12"],
        ["-", "--domain", "x.test", "--timeout", "0"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = CliRunner().invoke(app, ["diagnose", *args], catch_exceptions=False)
    assert result.exit_code == 2, result.output


# --------------------------------------------------------------------------- DNS (knotd)


@pytest.fixture(scope="module")
def knot(tmp_path_factory: pytest.TempPathFactory, host: Serve) -> Iterator[Any]:
    dead = free_port()
    zones = {
        "good.test": (
            f"_vlmcs._tcp IN SRV 0 90 {host.port} kms1.good.test.\n"
            f"_vlmcs._tcp IN SRV 0 10 {host.port} kms2.good.test.\n"
            f"_vlmcs._tcp IN SRV 10 0 {host.port} backup.good.test.\n"
            "kms1 IN A 127.0.0.1\nkms2 IN A 127.0.0.1\nbackup IN A 127.0.0.1\n"
        ),
        "fallback.test": (
            f"_vlmcs._tcp IN SRV 0 0 {dead} dead.fallback.test.\n"
            f"_vlmcs._tcp IN SRV 10 0 {host.port} kms.fallback.test.\n"
            "dead IN A 127.0.0.1\nkms IN A 127.0.0.1\n"
        ),
        "empty.test": "",
        "nosvc.test": "_vlmcs._tcp IN SRV 0 0 0 .\n",
        "noaddr.test": f"_vlmcs._tcp IN SRV 0 0 {host.port} ghost.noaddr.test.\n",
        "literal.test": f"_vlmcs._tcp IN SRV 0 0 {host.port} 127.0.0.1.\n",
    }
    with knot_server(tmp_path_factory.mktemp("knot-diagnose"), zones) as server:
        server.dead_port = dead  # type: ignore[attr-defined]
        yield server


def dns_env(knot: Any) -> dict[str, str]:
    return {"KMSGATE_CLIENT_DNS_SERVER": f"{knot.address}:{knot.port}"}


def test_srv_records_with_priority_and_weight(knot: Any, host: Serve) -> None:
    code, doc = run_json("--domain", "good.test", env=dns_env(knot))
    assert code == 0
    assert doc["target"] == "_vlmcs._tcp.good.test"
    dns = steps(doc)["dns"][0]
    assert dns["status"] == "ok" and dns["title"] == "_vlmcs._tcp.good.test: 3 record(s)"
    assert [
        (r["target"], r["port"], r["priority"], r["weight"]) for r in dns["details"]["records"]
    ] == [
        ("kms1.good.test", host.port, 0, 90),
        ("kms2.good.test", host.port, 0, 10),
        ("backup.good.test", host.port, 10, 0),
    ]
    assert all(r["addresses"] == [LOOPBACK] for r in dns["details"]["records"])
    assert "about 90 % of first tries within its priority" in dns["explanation"]
    assert "about 10 % of first tries" in dns["explanation"]
    assert "the only record of its priority" in dns["explanation"]
    # vlmcs syntax: ".domain" as the target
    assert run_json(".good.test", env=dns_env(knot))[0] == 0


def test_unreachable_first_record_is_a_warning(knot: Any, host: Serve) -> None:
    code, doc = run_json("--domain", "fallback.test", env=dns_env(knot))
    assert code == 1
    tcp = steps(doc)["tcp"]
    assert [(f["status"], f["details"]["endpoint"]) for f in tcp] == [
        ("warning", f"{LOOPBACK}:{knot.dead_port}"),
        ("ok", f"{LOOPBACK}:{host.port}"),
    ]
    assert "Clients move on to the next host" in tcp[0]["explanation"]


@pytest.mark.parametrize(
    ("domain", "hresult", "words"),
    [
        ("empty.test", "0x8007232B", "find nothing"),
        ("nosvc.test", "0x8007251D", 'has target "."'),
        ("noaddr.test", "0x8007007B", "No target has an A or AAAA record"),
    ],
)
def test_dns_failures(knot: Any, domain: str, hresult: str, words: str) -> None:
    code, doc = run_json("--domain", domain, env=dns_env(knot))
    assert code == EXIT_CODES["dns"] == 3
    dns = steps(doc)["dns"][0]
    assert (dns["status"], dns["hresult"]) == ("error", hresult)
    assert words in dns["explanation"]
    assert [f["status"] for f in doc["findings"][1:]] == ["skipped"] * (len(STEPS) - 1)


def test_host_name_resolution(knot: Any, host: Serve) -> None:
    code, doc = run_json(f"kms1.good.test:{host.port}", env=dns_env(knot))
    assert code == 0
    assert steps(doc)["dns"][0]["title"] == "kms1.good.test resolves to 127.0.0.1"
    code, doc = run_json(f"nothere.good.test:{host.port}", env=dns_env(knot))
    assert code == 3 and steps(doc)["dns"][0]["title"] == "nothere.good.test does not resolve"


def test_srv_target_written_as_an_address_is_used_as_one(knot: Any, host: Serve) -> None:
    """As with the system resolver (and `kmsgate client`), no A look-up of "127.0.0.1."."""
    code, doc = run_json("--domain", "literal.test", env=dns_env(knot))
    assert code == 0
    records = steps(doc)["dns"][0]["details"]["records"]
    assert [(r["target"], r["addresses"]) for r in records] == [(LOOPBACK, [LOOPBACK])]
    assert steps(doc)["tcp"][0]["details"]["endpoint"] == f"{LOOPBACK}:{host.port}"


# --------------------------------------------------------------------------- pure steps


@pytest.mark.parametrize(
    ("data", "kind", "words"),
    [
        (b"HTTP/1.0 400 Bad Request\r\nServer: x\r\n\r\n", "http", "speaks HTTP, not KMS"),
        (bytes.fromhex("150301000202"), "tls", "speaks TLS"),
        (bytes.fromhex("160303003a02"), "tls", "speaks TLS"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "ssh", "SSH server"),
        (b"220 mail.example.org ESMTP\r\n", "text", "'220 mail.example.org ESMTP'"),
        (b"+OK Dovecot ready.\r\n", "text", "text protocol"),
        (b"\x00\x01\x02\xff", "binary", "4 bytes that are not DCE-RPC"),
    ],
)
def test_classify_non_rpc(data: bytes, kind: str, words: str) -> None:
    found, why = classify_non_rpc(data)
    assert found == kind and words in why


@settings(max_examples=200, deadline=None)
@given(
    offset=st.integers(min_value=-24 * 3600, max_value=24 * 3600),
    tolerance=st.integers(min_value=2 * 3600, max_value=12 * 3600),
)
def test_probe_clock_finds_any_offset_a_4_hour_grid_can_reach(offset: int, tolerance: int) -> None:
    """A simulated host accepting |shift - offset| <= tolerance: both edges to a minute."""
    if abs(offset) <= tolerance:
        return  # the first request would have been accepted: no probing happens

    async def accepts(shift: float) -> bool:
        return abs(shift - offset) <= tolerance

    estimate = asyncio.run(probe_clock(accepts))
    assert estimate is not None and estimate.probes <= 64
    assert abs(estimate.host_offset - offset) <= 60
    assert estimate.tolerance is not None and abs(estimate.tolerance - tolerance) <= 60


@settings(max_examples=100, deadline=None)
@given(
    offset=st.integers(min_value=-400 * 86400, max_value=400 * 86400),
    tolerance=st.integers(min_value=60, max_value=12 * 3600),
)
def test_probe_clock_never_reports_an_edge_the_host_refused(offset: int, tolerance: int) -> None:
    if abs(offset) <= tolerance:
        return
    asked: list[float] = []

    async def accepts(shift: float) -> bool:
        asked.append(shift)
        return abs(shift - offset) <= tolerance

    estimate = asyncio.run(probe_clock(accepts))
    assert len(asked) <= 64
    if estimate is not None:
        assert abs(estimate.near_edge - offset) <= tolerance  # an accepted shift
        assert abs(estimate.host_offset - offset) <= tolerance


def test_probe_clock_stops_when_the_connection_fails() -> None:
    calls = 0

    async def accepts(shift: float) -> bool | None:
        nonlocal calls
        calls += 1
        return None

    assert asyncio.run(probe_clock(accepts)) is None and calls == 1
    assert len(set(COARSE_SHIFTS)) == len(COARSE_SHIFTS)


# --------------------------------------------------------------------------- HRESULT table


def test_every_kms_hresult_has_a_cause_and_a_fix() -> None:
    assert {info.code for info in KMS_HRESULTS} == set(HResult) - {HResult.S_OK}
    for info in KMS_HRESULTS:
        assert info.cause.endswith(".") and info.fix.endswith(".")
        assert describe(info.code) == f"{info.hex} ({info.summary})"
    assert describe(0) == "0x00000000 (success)"
    assert describe(0x1C010003).endswith("(nca_unk_if: unknown interface or presentation context)")
    assert describe(0x12345678) == "0x12345678"


def test_troubleshooting_doc_shows_the_table() -> None:
    text = DOCS.read_text()
    start, end = "<!-- hresult-table:start -->\n", "<!-- hresult-table:end -->"
    assert start in text and end in text
    shown = text.split(start, 1)[1].split(end, 1)[0]
    assert shown == markdown_table(), "run tools/gen_hresult_docs.py"
