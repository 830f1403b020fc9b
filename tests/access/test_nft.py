"""NftWindowSet: ruleset text and validation, then real kernel filtering in network namespaces."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kmsgate.access.nft import (
    NftError,
    NftWindowSet,
    check_hooks,
    check_port,
    check_table,
    normalize_address,
    ruleset,
    seconds_left,
)

pytestmark = pytest.mark.integration

# ---------------------------------------------------------------- ruleset text and validation

DEFAULT_RULESET = """\
# kmsgate: only sources holding an activation window reach TCP port 1688
table inet kmsgate {
\tset windows_v4 {
\t\ttype ipv4_addr
\t\tflags timeout
\t}
\tset windows_v6 {
\t\ttype ipv6_addr
\t\tflags timeout
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t}
\tchain input {
\t}
}
flush chain inet kmsgate forward
flush chain inet kmsgate input
delete chain inet kmsgate input
add rule inet kmsgate forward tcp dport 1688 ct state established,related accept
add rule inet kmsgate forward tcp dport 1688 ip saddr @windows_v4 accept
add rule inet kmsgate forward tcp dport 1688 ip6 saddr @windows_v6 accept
add rule inet kmsgate forward tcp dport 1688 drop
"""


def test_default_ruleset_text() -> None:
    assert ruleset() == DEFAULT_RULESET
    assert ruleset("kmsgate", 1688, ["forward"]) == DEFAULT_RULESET


def test_both_hooks_reject_and_custom_table_port() -> None:
    text = ruleset("gw_2", 11688, ("input", "forward", "input"), reject=True)
    assert "delete chain" not in text
    for hook in ("forward", "input"):
        assert f"\tchain {hook} {{\n\t\ttype filter hook {hook} priority filter;" in text
        assert f"flush chain inet gw_2 {hook}\n" in text
        assert f"add rule inet gw_2 {hook} tcp dport 11688 reject with tcp reset\n" in text
        assert f"add rule inet gw_2 {hook} tcp dport 11688 ip saddr @windows_v4 accept\n" in text
    assert " drop" not in text
    # canonical order whatever the caller's: forward first
    assert text.index("add rule inet gw_2 forward") < text.index("add rule inet gw_2 input")


def test_no_hooks_keeps_only_the_sets() -> None:
    text = ruleset("kmsgate", 1688, ())
    assert "add rule" not in text
    assert "type filter hook" not in text
    assert "delete chain inet kmsgate forward\n" in text
    assert "delete chain inet kmsgate input\n" in text
    assert "set windows_v4 {" in text and "set windows_v6 {" in text
    assert NftWindowSet(hooks=("forward", "input"), install_rules=False).hooks == ()


def test_hooks_given_as_one_name() -> None:
    assert check_hooks("input") == ("input",)


@pytest.mark.parametrize(
    "table",
    ["", "1kms", "kms gate", "kms;flush ruleset", "kms\n", "kms}", 'k"s', "kms-gate", "k" * 65],
)
def test_bad_table_names_are_refused(table: str) -> None:
    with pytest.raises(ValueError, match="table name"):
        check_table(table)
    with pytest.raises(ValueError):
        ruleset(table)
    with pytest.raises(ValueError):
        NftWindowSet(table)


@pytest.mark.parametrize("table", ["kmsgate", "K", "kms_gate_2", "k" * 64])
def test_good_table_names(table: str) -> None:
    assert check_table(table) == table


@pytest.mark.parametrize("port", [0, -1, 65536, True, "1688", 1688.0])
def test_bad_ports_are_refused(port: object) -> None:
    with pytest.raises(ValueError, match="port"):
        check_port(port)  # type: ignore[arg-type]


@pytest.mark.parametrize("hooks", [["prerouting"], ["forward", "output"], ["FORWARD"]])
def test_bad_hooks_are_refused(hooks: list[str]) -> None:
    with pytest.raises(ValueError, match="hook"):
        ruleset("kmsgate", 1688, hooks)


@pytest.mark.parametrize("netns", ["-n", "a/b", "../x", "a b", ""])
def test_bad_netns_names_are_refused(netns: str) -> None:
    with pytest.raises(ValueError, match="namespace"):
        NftWindowSet(netns=netns)


@pytest.mark.parametrize(
    ("given", "version", "text"),
    [
        ("10.231.1.2", 4, "10.231.1.2"),
        ("::ffff:10.231.1.2", 4, "10.231.1.2"),
        ("FD31:0001::0002", 6, "fd31:1::2"),
        ("fe80::1%eth0", 6, "fe80::1"),
    ],
)
def test_addresses_are_normalised(given: str, version: int, text: str) -> None:
    parsed = normalize_address(given)
    assert (parsed.version, str(parsed)) == (version, text)


@pytest.mark.parametrize(
    "bad", ["", "10.0.0.1 }", "10.0.0.1; flush ruleset", "10.0.0.0/24", "[::1]", "host.example"]
)
def test_bad_addresses_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="address"):
        normalize_address(bad)


def test_seconds_left_rounds_up_and_stops_at_zero() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert seconds_left(now + timedelta(seconds=299, milliseconds=1), now) == 300
    assert seconds_left(now + timedelta(seconds=5), now) == 5
    assert seconds_left(now - timedelta(seconds=1), now) == 0


# ------------------------------------------------- the nft invocations, against a fake nft


FAKE_NFT = """#!/bin/sh
# Records its argv and stdin; behaves as $FAKE_MODE says.
echo "$@" >> "$FAKE_LOG.args"
cat >> "$FAKE_LOG.stdin"
case "$FAKE_MODE" in
  ok) exit 0 ;;
  enoent) echo 'Error: Could not process rule: No such file or directory' >&2; exit 1 ;;
  perm) echo 'Error: Could not process rule: Operation not permitted' >&2; exit 1 ;;
  hang) exec sleep 30 ;;
esac
"""


@pytest.fixture
def fake_nft(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    script = tmp_path / "nft"
    script.write_text(FAKE_NFT)
    script.chmod(0o755)
    log = tmp_path / "calls"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_MODE", "ok")
    yield script, log


async def test_allow_feeds_one_atomic_transaction(fake_nft: tuple[Path, Path]) -> None:
    script, log = fake_nft
    nft = NftWindowSet("kgt", nft=str(script))
    await nft.allow("::ffff:10.231.1.2", 5)
    await nft.allow("FD31:1::2", 300)
    assert Path(f"{log}.args").read_text().splitlines() == ["-f -", "-f -"]
    assert Path(f"{log}.stdin").read_text() == (
        "add element inet kgt windows_v4 { 10.231.1.2 }\n"
        "delete element inet kgt windows_v4 { 10.231.1.2 }\n"
        "add element inet kgt windows_v4 { 10.231.1.2 timeout 5s }\n"
        "add element inet kgt windows_v6 { fd31:1::2 }\n"
        "delete element inet kgt windows_v6 { fd31:1::2 }\n"
        "add element inet kgt windows_v6 { fd31:1::2 timeout 300s }\n"
    )


@pytest.mark.parametrize("seconds", [0, -5, True, 2.5, 7 * 86400 + 1])
async def test_allow_refuses_bad_durations(fake_nft: tuple[Path, Path], seconds: object) -> None:
    script, log = fake_nft
    with pytest.raises(ValueError, match="seconds"):
        await NftWindowSet(nft=str(script)).allow("10.0.0.1", seconds)  # type: ignore[arg-type]
    assert not Path(f"{log}.args").exists()


async def test_bad_address_never_reaches_nft(fake_nft: tuple[Path, Path]) -> None:
    script, log = fake_nft
    nft = NftWindowSet(nft=str(script))
    with pytest.raises(ValueError):
        await nft.allow("10.0.0.1 } ; flush ruleset ; add element inet x y { 1.1.1.1", 5)
    with pytest.raises(ValueError):
        await nft.revoke("nope")
    assert not Path(f"{log}.args").exists()


async def test_revoke_and_remove_ignore_not_found(
    fake_nft: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    script, log = fake_nft
    monkeypatch.setenv("FAKE_MODE", "enoent")
    nft = NftWindowSet("kgt", nft=str(script))
    await nft.revoke("10.231.1.2")
    await nft.remove()
    assert Path(f"{log}.stdin").read_text() == (
        "delete element inet kgt windows_v4 { 10.231.1.2 }\ndelete table inet kgt\n"
    )
    with pytest.raises(NftError) as caught:
        await nft.allow("10.231.1.2", 5)
    assert "No such file or directory" in caught.value.stderr
    assert caught.value.returncode == 1


async def test_other_failures_raise_with_stderr(
    fake_nft: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    script, _ = fake_nft
    monkeypatch.setenv("FAKE_MODE", "perm")
    nft = NftWindowSet(nft=str(script))
    for call in (nft.ensure(), nft.revoke("10.0.0.1"), nft.remove()):
        with pytest.raises(NftError, match="Operation not permitted") as caught:
            await call
        assert "Operation not permitted" in caught.value.stderr


async def test_hung_nft_is_killed(
    fake_nft: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    script, _ = fake_nft
    monkeypatch.setenv("FAKE_MODE", "hang")
    nft = NftWindowSet(nft=str(script), timeout=0.3)
    started = time.monotonic()
    with pytest.raises(NftError, match="longer than"):
        await nft.ensure()
    assert time.monotonic() - started < 5


async def test_missing_nft_binary(tmp_path: Path) -> None:
    with pytest.raises(NftError, match="cannot run"):
        await NftWindowSet(nft=str(tmp_path / "no-such-nft")).ensure()


def test_netns_prefixes_the_command() -> None:
    nft = NftWindowSet(netns="kg-gateway", nft="/usr/sbin/nft")
    assert nft._argv("-f", "-") == ["ip", "netns", "exec", "kg-gateway", "/usr/sbin/nft", "-f", "-"]
    assert NftWindowSet()._argv("-j", "list", "ruleset") == ["nft", "-j", "list", "ruleset"]


# ------------------------------------------------------- the kernel, in namespaces we create

CLIENT4, GATEWAY4_C, GATEWAY4_U, UPSTREAM4 = "10.231.1.2", "10.231.1.1", "10.231.2.1", "10.231.2.2"
CLIENT6, GATEWAY6_C, GATEWAY6_U, UPSTREAM6 = "fd31:1::2", "fd31:1::1", "fd31:2::1", "fd31:2::2"
PORT, OTHER_PORT = 1688, 1689
PROBE_TIMEOUT = 0.7  # a veth round trip takes well under a millisecond
CLONE_NEWNET = 0x40000000

# Answers each connection with the peer's address (so a test sees no NAT is involved), then
# echoes one read. Exits
# when its stdin closes (the test process ended) or after 120 s, whichever comes first.
SERVER = """
import selectors, socket, sys, time
sel = selectors.DefaultSelector()
for spec in sys.argv[1:]:
    host, port = spec.rsplit(":", 1)
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port)))
    s.listen(64)
    sel.register(s, selectors.EVENT_READ)
sel.register(sys.stdin, selectors.EVENT_READ)
print("ready", flush=True)
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    for key, _ in sel.select(timeout=1):
        if key.fileobj is sys.stdin:
            sys.exit(0)
        conn, peer = key.fileobj.accept()
        with conn:
            conn.sendall(peer[0].encode() + b"\\n")
            conn.settimeout(2)
            try:
                conn.sendall(conn.recv(100))  # one echo, for a connection that goes on
            except OSError:
                pass
"""


@dataclass
class Topology:
    """client --(10.231.1.0/24)-- gateway --(10.231.2.0/24)-- upstream, each its own netns."""

    client: str
    gateway: str
    upstream: str
    token: str


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)


def _must(*args: str) -> None:
    done = _ip(*args)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _start_server(netns: str, *specs: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", SERVER, *specs],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout = proc.stdout
    assert stdout is not None
    ready: list[str] = []
    # readline on a thread: a server that never says "ready" must not hang the test run
    reader = threading.Thread(target=lambda: ready.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(10)
    if ready != ["ready\n"]:
        proc.kill()
        _, err = proc.communicate(timeout=5)
        raise RuntimeError(f"echo server in {netns} did not start: {err.strip()}")
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(OSError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _build(top: Topology) -> None:
    c, g, u = top.client, top.gateway, top.upstream
    # The veths are created inside the namespaces, never in the host's, so deleting the
    # namespaces removes them (and every nft table in them) whatever else failed.
    _must("-n", c, "link", "add", "c0", "type", "veth", "peer", "name", "g0", "netns", g)
    _must("-n", g, "link", "add", "g1", "type", "veth", "peer", "name", "u0", "netns", u)
    for ns, dev, v4, v6 in (
        (c, "c0", CLIENT4, CLIENT6),
        (g, "g0", GATEWAY4_C, GATEWAY6_C),
        (g, "g1", GATEWAY4_U, GATEWAY6_U),
        (u, "u0", UPSTREAM4, UPSTREAM6),
    ):
        _must("-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
        # nodad: usable at once, no 1-2 s of duplicate address detection
        _must("-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
        _must("-n", ns, "link", "set", dev, "up")
    for ns in (c, g, u):
        _must("-n", ns, "link", "set", "lo", "up")
    _must("-n", c, "route", "add", "default", "via", GATEWAY4_C)
    _must("-n", c, "-6", "route", "add", "default", "via", GATEWAY6_C)
    _must("-n", u, "route", "add", "default", "via", GATEWAY4_U)
    _must("-n", u, "-6", "route", "add", "default", "via", GATEWAY6_U)
    done = subprocess.run(
        ["ip", "netns", "exec", g, "sysctl", "-qw", "net.ipv4.ip_forward=1",
         "net.ipv6.conf.all.forwarding=1"],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"sysctl in {g}: {done.stderr.strip()}")


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    if shutil.which("ip") is None or shutil.which("nft") is None:
        pytest.skip("needs the `ip` (iproute2) and `nft` (nftables) commands")
    token = secrets.token_hex(3)
    top = Topology(f"kg{token}-client", f"kg{token}-gateway", f"kg{token}-upstream", token)
    created: list[str] = []
    servers: list[subprocess.Popen[str]] = []
    try:
        first = _ip("netns", "add", top.client)
        if first.returncode != 0:
            pytest.skip(f"cannot create a network namespace (CAP_NET_ADMIN?): {first.stderr}")
        created.append(top.client)
        probe = subprocess.run(
            ["ip", "netns", "exec", top.client, "nft", "list", "tables"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        if probe.returncode != 0:
            pytest.skip(f"nftables not usable in a network namespace: {probe.stderr.strip()}")
        for ns in (top.gateway, top.upstream):
            _must("netns", "add", ns)
            created.append(ns)
        _build(top)
        servers.append(
            _start_server(
                top.upstream,
                f"{UPSTREAM4}:{PORT}",
                f"{UPSTREAM4}:{OTHER_PORT}",
                f"{UPSTREAM6}:{PORT}",
            )
        )
        servers.append(_start_server(top.gateway, f"{GATEWAY4_C}:{PORT}"))
        yield top
    finally:
        for proc in servers:
            _stop(proc)
        for ns in reversed(created):
            _ip("netns", "del", ns)


def _netns_socket(netns: str, family: socket.AddressFamily) -> socket.socket:
    """A TCP socket living in `netns`: made on a throwaway thread that entered it."""
    made: list[socket.socket | OSError] = []

    def enter_and_make() -> None:
        # setns(CLONE_NEWNET) moves only this OS thread, which then ends; Python 3.11 has no
        # os.setns, hence libc. Never run this on a pooled thread.
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            finally:
                os.close(fd)
            made.append(socket.socket(family, socket.SOCK_STREAM))
        except OSError as exc:
            made.append(exc)

    thread = threading.Thread(target=enter_and_make)
    thread.start()
    thread.join(10)
    if not made:
        raise RuntimeError(f"could not make a socket in {netns}")
    result = made[0]
    if isinstance(result, OSError):
        raise result
    return result


def _probe(netns: str, host: str, port: int) -> str:
    """Connect from `netns`: the address the server saw, or 'timeout' / 'refused'."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with _netns_socket(netns, family) as sock:
        sock.settimeout(PROBE_TIMEOUT)
        try:
            sock.connect((host, port))
            return sock.recv(100).decode().strip()
        except TimeoutError:
            return "timeout"
        except ConnectionRefusedError:
            return "refused"


async def probe(top: Topology, host: str, port: int = PORT) -> str:
    return await asyncio.to_thread(_probe, top.client, host, port)


def _list_table(top: Topology, table: str) -> list[dict[str, object]]:
    done = subprocess.run(
        ["ip", "netns", "exec", top.gateway, "nft", "-j", "list", "table", "inet", table],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    return [item for item in json.loads(done.stdout)["nftables"] if "metainfo" not in item]


@pytest.fixture
async def gate(topology: Topology) -> AsyncIterator[NftWindowSet]:
    nft = NftWindowSet(
        f"kgt{topology.token}", hooks=("forward", "input"), netns=topology.gateway, timeout=10
    )
    try:
        yield nft
    finally:
        await nft.remove()


async def test_forward_needs_a_window(topology: Topology, gate: NftWindowSet) -> None:
    # without the table the path is open: whatever blocks below is our ruleset
    assert await probe(topology, UPSTREAM4) == CLIENT4
    await gate.ensure()
    assert await probe(topology, UPSTREAM4) == "timeout"
    assert await probe(topology, UPSTREAM4, OTHER_PORT) == CLIENT4  # other ports unaffected

    await gate.allow(CLIENT4, 5)
    assert set(await gate.elements()) == {CLIENT4}
    assert await probe(topology, UPSTREAM4) == CLIENT4
    assert await probe(topology, UPSTREAM4) == CLIENT4  # the kernel does not consume it

    await gate.revoke(CLIENT4)
    await gate.revoke(CLIENT4)  # already gone: no error
    assert await gate.elements() == {}
    assert await probe(topology, UPSTREAM4) == "timeout"
    assert await probe(topology, UPSTREAM4, OTHER_PORT) == CLIENT4


async def test_ipv6_window(topology: Topology, gate: NftWindowSet) -> None:
    await gate.ensure()
    await gate.allow(CLIENT4, 5)  # an IPv4 window does not open IPv6
    assert await probe(topology, UPSTREAM6) == "timeout"
    await gate.allow(CLIENT6, 5)
    assert await probe(topology, UPSTREAM6) == CLIENT6
    await gate.revoke(CLIENT6)
    assert await probe(topology, UPSTREAM6) == "timeout"
    assert await probe(topology, UPSTREAM4) == CLIENT4


async def test_window_times_out_by_itself(topology: Topology, gate: NftWindowSet) -> None:
    await gate.ensure()
    await gate.allow(f"::ffff:{CLIENT4}", 2)  # as a dual-stack listener reports the peer
    granted = time.monotonic()
    assert await probe(topology, UPSTREAM4) == CLIENT4
    outcome = CLIENT4
    for _ in range(20):  # bounded: at most ~4 s of polling
        if time.monotonic() - granted > 4.0:
            break
        outcome = await probe(topology, UPSTREAM4)
        if outcome == "timeout":
            break
        await asyncio.sleep(0.2)
    assert outcome == "timeout", "the element did not expire within 4 s"
    assert time.monotonic() - granted >= 1.5  # and not long before its 2 s were up
    assert await gate.elements() == {}


async def test_allow_again_replaces_the_timeout(topology: Topology, gate: NftWindowSet) -> None:
    await gate.ensure()
    await gate.allow(CLIENT4, 300)
    await gate.allow(CLIENT4, 3)
    expires = (await gate.elements())[CLIENT4]
    assert expires is not None and expires <= 3


async def test_established_connection_survives_revoke(
    topology: Topology, gate: NftWindowSet
) -> None:
    await gate.ensure()
    await gate.allow(CLIENT4, 5)
    sock = await asyncio.to_thread(_netns_socket, topology.client, socket.AF_INET)
    with sock:
        sock.settimeout(PROBE_TIMEOUT)
        await asyncio.to_thread(sock.connect, (UPSTREAM4, PORT))
        assert (await asyncio.to_thread(sock.recv, 100)).strip().decode() == CLIENT4
        await gate.revoke(CLIENT4)  # as Gateway.admit does once it consumed the window
        await asyncio.to_thread(sock.sendall, b"still-served")
        assert await asyncio.to_thread(sock.recv, 100) == b"still-served"
    assert await probe(topology, UPSTREAM4) == "timeout"


async def test_input_hook_guards_the_gateway_itself(topology: Topology, gate: NftWindowSet) -> None:
    assert await probe(topology, GATEWAY4_C) == CLIENT4
    await gate.ensure()
    assert await probe(topology, GATEWAY4_C) == "timeout"
    await gate.allow(CLIENT4, 5)
    assert await probe(topology, GATEWAY4_C) == CLIENT4


async def test_reject_answers_with_a_reset(topology: Topology) -> None:
    nft = NftWindowSet(f"kgr{topology.token}", netns=topology.gateway, reject=True)
    try:
        await nft.ensure()
        started = time.monotonic()
        assert await probe(topology, UPSTREAM4) == "refused"
        assert time.monotonic() - started < PROBE_TIMEOUT
    finally:
        await nft.remove()
    assert await probe(topology, UPSTREAM4) == CLIENT4


async def test_ensure_is_idempotent_and_keeps_windows(
    topology: Topology, gate: NftWindowSet
) -> None:
    await gate.ensure()
    await gate.allow(CLIENT4, 30)
    await gate.ensure()
    items = _list_table(topology, gate.table)
    rules = [item["rule"] for item in items if "rule" in item]
    assert len(rules) == 8  # 4 per hook, not doubled
    assert set(await gate.elements()) == {CLIENT4}
    assert await probe(topology, UPSTREAM4) == CLIENT4

    # narrowing the hooks deletes the chain no longer wanted, still keeping the windows
    await NftWindowSet(gate.table, hooks=("forward",), netns=topology.gateway).ensure()
    chains = [item["chain"] for item in _list_table(topology, gate.table) if "chain" in item]
    assert [chain["name"] for chain in chains] == ["forward"]  # type: ignore[index]
    assert set(await gate.elements()) == {CLIENT4}
    sets_only = NftWindowSet(gate.table, install_rules=False, netns=topology.gateway)
    await sets_only.ensure()
    assert not [item for item in _list_table(topology, gate.table) if "chain" in item]
    assert await probe(topology, UPSTREAM4) == CLIENT4  # no rules: nothing blocked


async def test_remove_opens_the_path_and_is_idempotent(
    topology: Topology, gate: NftWindowSet
) -> None:
    await gate.ensure()
    assert await probe(topology, UPSTREAM4) == "timeout"
    await gate.remove()
    await gate.remove()
    assert await probe(topology, UPSTREAM4) == CLIENT4
    with pytest.raises(NftError) as caught:
        await gate.allow(CLIENT4, 5)
    assert caught.value.stderr
