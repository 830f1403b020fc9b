#!/usr/bin/env python3
"""kmsgate against the Python ceiling (and another host) on one core, side by side in one run.

Each server runs pinned to CPU 0 (with its child processes), the load generator on CPU 1.
Rounds alternate the servers so that drifts of this machine's speed hit all of them alike.
The load generator is the C `kmsload` from ../shared/tools (compiled here at run time) when
that exists, else kmsgate's own Python one (far slower: the ceiling is then the client's).

The ceiling answers the captured bind and request with canned bytes and does nothing else:
whatever kmsgate spends above it is kmsgate's own work. The captured request carries a 2018
client time, so kmsgate runs with --max-clock-skew 0 (else it would refuse with 0xC004F06C).

Usage: bench/bench_ceiling.py [--rounds 3] [--seconds 10] [--concurrency 8]
           [--modes fresh,keep] [--node default|bare] [--log-level warning]
           [--other 'vlmcsd -D -L 127.0.0.1:{port}'] [--other-setup 'COMMAND {data}']
`--other` is any host's command: {port} is replaced by the port, {data} by a fresh directory
(the C peer vlmcsd as above, built as docs/benchmarks.md says; or an older kmsgate tree:
'OLD/.venv/bin/kmsgate serve --listen 127.0.0.1:{port} --data-dir {data} --max-clock-skew 0
--web 127.0.0.1:0 --log-level warning'). With --other it also prints kmsgate's rate over the
other host's, round by round. `--other-setup` runs once before each start of the other
host, {data} replaced: for another kmsgate node, its `db upgrade --data-dir {data}`, so that
it starts on a current schema as kmsgate's node here does (a first start that migrates
carries Alembic, ~7 MiB of PSS, into the comparison).
Prints one line per measurement (with the CPU time the server's processes spent per answer,
on a shared machine the steadier figure, and CPU 0's busy time per answer, the only right
one for a host that forks per connection) and, per mode, the median ratio to the ceiling;
with --json one JSON object at the end. The first line names the machine (processor, caches,
guest halt-polling): the same code's ratios differ by machine class. Bounded: at most 20
rounds of at most 60 s each.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VECTOR = REPO / "tests" / "vectors" / "v6_win10ent_ndr32.json"
SHARED_LOADGEN = REPO.parent / "shared" / "tools" / "kmsload.c"
KMSGATE = Path(sys.executable).with_name("kmsgate")
HOST = "127.0.0.1"

# The ceiling: a uvloop protocol answering each PDU with the captured reply, nothing else.
CEILING = r"""
import asyncio, json, sys, uvloop
pdus = json.load(open(sys.argv[2]))["pdus"]
ack = bytes.fromhex(next(p["hex"] for p in pdus if p["ptype"] == 12))
answer = bytes.fromhex(next(p["hex"] for p in pdus if p["ptype"] == 2))
class Canned(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.pending = transport, b""
    def data_received(self, data):
        self.pending += data
        while len(self.pending) >= 10:
            size = int.from_bytes(self.pending[8:10], "little")
            if len(self.pending) < size:
                return
            pdu, self.pending = self.pending[:size], self.pending[size:]
            self.transport.write(ack if pdu[2] == 11 else answer)
async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Canned, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    await server.serve_forever()
uvloop.run(main())
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("server did not listen")


def tree(pid: int) -> list[int]:
    """The pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process tree, in seconds, with that of the children it
    has reaped (a forking host's short-lived children are otherwise lost between samples)."""
    ticks = 0
    for member in tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def core_busy_seconds(cpu: int) -> float:
    """Seconds CPU `cpu` spent on anything but idling, from /proc/stat: the whole cost of a
    host pinned there, children a forking host never waits for and softirqs included."""
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields[0] == f"cpu{cpu}":
            ticks = [int(value) for value in fields[1:9]]  # user … steal
            return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # - idle, iowait
    return 0.0


def machine() -> str:
    """The server core's processor, caches and guest halt-polling: ratios differ by machine
    class (docs/benchmarks.md: the C peer leads on one, kmsgate on another)."""
    info: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "cpu family", "model") and key not in info:
            info[key] = value.strip()
    caches = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        level, kind, size = ((index / f).read_text().strip() for f in ("level", "type", "size"))
        if kind != "Instruction":
            caches.append(f"L{level} {size}")
    halt_poll = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
    polling = f"{halt_poll.read_text().strip()} ns" if halt_poll.exists() else "n/a"
    return (f"{info.get('model name', '?')} (family {info.get('cpu family', '?')} model "
            f"{info.get('model', '?')}), {', '.join(caches)}, {os.cpu_count()} CPUs, "
            f"guest halt-poll {polling}")  # fmt: skip


def memory(pid: int) -> dict[str, float]:
    """RSS and PSS (MiB) of a process tree, from smaps_rollup."""
    rss = pss = 0
    for member in tree(pid):
        try:
            text = Path(f"/proc/{member}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name == "Rss":
                rss += int(value.split()[0])
            elif name == "Pss":
                pss += int(value.split()[0])
    return {"rss_mib": round(rss / 1024, 1), "pss_mib": round(pss / 1024, 1)}


def write_pdus(workdir: Path) -> list[Path]:
    pdus = json.loads(VECTOR.read_text())["pdus"]
    paths = []
    for name, ptype in (("bind.bin", 11), ("request.bin", 0)):
        path = workdir / name
        path.write_bytes(bytes.fromhex(next(p["hex"] for p in pdus if p["ptype"] == ptype)))
        paths.append(path)
    return paths


def build_kmsload(workdir: Path) -> Path | None:
    if not SHARED_LOADGEN.exists() or shutil.which("gcc") is None:
        return None
    binary = workdir / "kmsload"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(SHARED_LOADGEN)], check=True)
    return binary


def can_pin() -> bool:
    """Whether servers and the load generator each get a core of their own (CPU 0 and 1)."""
    return shutil.which("taskset") is not None and {0, 1} <= os.sched_getaffinity(0)


def pinned(cmd: list[str], cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if can_pin() else cmd


WARMUP = 1.0


def run_load(
    kmsload: Path | None,
    pdus: list[Path],
    port: int,
    mode: str,
    args: argparse.Namespace,
    server_pid: int,
) -> dict[str, Any]:
    """One load run; adds the server's CPU µs per answer (`cpu_us`) and its core's busy µs per
    answer (`core_us`) to the generator's JSON."""
    if kmsload is not None:
        cmd = [str(kmsload), "-p", str(port), "-c", str(args.concurrency), "-d",
               str(args.seconds), "-w", str(WARMUP), "-m", mode, "-L", *map(str, pdus)]  # fmt: skip
        load = subprocess.Popen(pinned(cmd, 1), stdout=subprocess.PIPE, text=True)
        time.sleep(WARMUP)  # kmsload counts answers from the end of its warm-up on
        cpu_before, core_before = cpu_seconds(server_pid), core_busy_seconds(0)
        out, _ = load.communicate(timeout=120)
        cpu = cpu_seconds(server_pid) - cpu_before
        core = core_busy_seconds(0) - core_before
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        result["cpu_us"] = round(cpu * 1e6 / max(result["ok"], 1), 1)
        # Unpinned, CPU 0's time is anybody's.
        result["core_us"] = round(core * 1e6 / max(result["ok"], 1), 1) if can_pin() else None
        return result
    # Fallback: kmsgate's own load generator (fresh: one request per connection).
    per_connection = "1" if mode == "fresh" else "1000"
    cmd = [str(KMSGATE), "client", f"{HOST}:{port}", "--load", "100000000", "--concurrency",
           str(args.concurrency), "--duration-limit", str(args.seconds), "--count",
           per_connection, "--json"]  # fmt: skip
    done = subprocess.run(pinned(cmd, 1), capture_output=True, text=True, timeout=120)
    summary = json.loads(done.stdout)
    return {
        "rate": summary["activations_per_s"],
        "p99_ms": summary["latency_ms"]["p99"],
        "rpcerr": summary["failed"],
    }


def server_command(name: str, port: int, workdir: Path, args: argparse.Namespace) -> list[str]:
    if name == "ceiling":
        script = workdir / "ceiling.py"
        script.write_text(CEILING)
        return [sys.executable, str(script), str(port), str(VECTOR)]
    if name == "kmsgate":
        data = tempfile.mkdtemp(prefix="node-", dir=workdir)
        cmd = [str(KMSGATE), "serve", "--listen", f"{HOST}:{port}", "--data-dir", data,
               "--max-clock-skew", "0", "--log-level", args.log_level]  # fmt: skip
        if args.node == "bare":
            cmd += ["--no-store", "--no-web"]
        else:
            cmd += ["--web", f"{HOST}:0"]
            # As at every start but the first after an upgrade: the schema is current, so the
            # node does not load Alembic (about 6 MiB) to migrate it.
            subprocess.run([str(KMSGATE), "db", "upgrade", "--data-dir", data],
                           check=True, capture_output=True)  # fmt: skip
        return cmd
    data = tempfile.mkdtemp(prefix="other-", dir=workdir)
    if args.other_setup:
        subprocess.run(shlex.split(args.other_setup.format(data=data)),
                       check=True, capture_output=True)  # fmt: skip
    return shlex.split(args.other.format(port=port, data=data))


def measure(
    name: str, kmsload: Path | None, pdus: list[Path], workdir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    port = free_port()
    proc = subprocess.Popen(
        pinned(server_command(name, port, workdir, args), 0),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_listening(proc, port)
        time.sleep(1.0)  # let imports, migrations and the writer settle
        out: dict[str, Any] = {"server": name, "idle": memory(proc.pid)}
        for mode in args.modes:
            result = run_load(kmsload, pdus, port, mode, args, proc.pid)
            out[mode] = {
                "rate": result["rate"],
                "p99_ms": result.get("p99_ms"),
                "cpu_us": result.get("cpu_us"),
                "core_us": result.get("core_us"),
                "errors": result.get("rpcerr", 0) + result.get("badresp", 0),
            }
        out["loaded"] = memory(proc.pid)
        return out
    finally:
        stop_group(proc, 20)


def stop_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the server's process group, SIGKILL it after `timeout` seconds."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _rate(results: list[dict[str, Any]], round_no: int, server: str, mode: str) -> float:
    """The rate one server reached in one round and mode."""
    found = next(r for r in results if r["round"] == round_no and r["server"] == server)
    return float(found[mode]["rate"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--modes", default="fresh,keep")
    parser.add_argument(
        "--node",
        choices=("default", "bare"),
        default="default",
        help="default: SQLite recording + dashboard; bare: --no-store --no-web",
    )
    parser.add_argument(
        "--log-level", default="warning", help="kmsgate's --log-level (info logs every answer)"
    )
    parser.add_argument("--other", help="command of another host, {port} and {data} replaced")
    parser.add_argument("--other-setup", help="command run before the other host, {data} replaced")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.rounds = min(max(args.rounds, 1), 20)
    args.seconds = min(max(args.seconds, 1.0), 60.0)
    args.modes = [m for m in args.modes.split(",") if m in ("fresh", "keep")]
    servers = ["ceiling", "kmsgate"] + (["other"] if args.other else [])
    described = machine()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ceiling-") as tmp:
        workdir = Path(tmp)
        pdus = write_pdus(workdir)
        kmsload = build_kmsload(workdir)
        print(f"machine: {described}", file=sys.stderr)
        print(f"load generator: {'C kmsload' if kmsload else 'kmsgate client --load (Python)'}; "
              f"node: {args.node}; {args.rounds} rounds of {args.seconds:g} s, "
              f"concurrency {args.concurrency}", file=sys.stderr)  # fmt: skip
        for round_no in range(args.rounds):
            order = servers if round_no % 2 == 0 else list(reversed(servers))
            for name in order:
                result = measure(name, kmsload, pdus, workdir, args)
                result["round"] = round_no + 1
                results.append(result)
                rates = "  ".join(
                    f"{m} {result[m]['rate']:>9.0f}/s p99 {result[m]['p99_ms']} ms "
                    f"cpu {result[m]['cpu_us']} core {result[m]['core_us']} µs"
                    f"{' ERR ' + str(result[m]['errors']) if result[m]['errors'] else ''}"
                    for m in args.modes
                )
                print(f"round {round_no + 1} {name:<8} {rates}  RSS {result['loaded']['rss_mib']}"
                      f" MiB PSS {result['loaded']['pss_mib']} MiB", file=sys.stderr)  # fmt: skip
    summary: dict[str, Any] = {}
    for mode in args.modes:
        for name in servers[1:]:
            ratios = []
            for round_no in range(1, args.rounds + 1):
                ratios.append(
                    _rate(results, round_no, name, mode) / _rate(results, round_no, "ceiling", mode)
                )
            summary[f"{name}/{mode}"] = {
                "ratios": [round(r, 3) for r in ratios],
                "median": round(statistics.median(ratios), 3),
            }
            print(f"{name}/{mode}: ratio to the ceiling {summary[f'{name}/{mode}']['median']} "
                  f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)})")  # fmt: skip
        if args.other:
            # Head to head, round by round: the figure that says which host is faster.
            ratios = [
                _rate(results, round_no, "kmsgate", mode) / _rate(results, round_no, "other", mode)
                for round_no in range(1, args.rounds + 1)
            ]
            summary[f"kmsgate/other/{mode}"] = {
                "ratios": [round(r, 3) for r in ratios],
                "median": round(statistics.median(ratios), 3),
            }
            print(f"kmsgate/other/{mode}: {summary[f'kmsgate/other/{mode}']['median']} "
                  f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)})")  # fmt: skip
    for name in servers:
        pss = [r["loaded"]["pss_mib"] for r in results if r["server"] == name]
        print(f"{name}: PSS under load {statistics.median(pss):.1f} MiB")
    if args.json:
        print(json.dumps({"machine": described, "results": results, "summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
