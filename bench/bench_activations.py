"""End-to-end activation throughput of `kmsgate serve`, driven by our strict client (by hand).

Usage: .venv/bin/python bench/bench_activations.py [--pure-python] [--client-procs N]
       [--total 3000] [--seconds 15] [--repeat 3]

The server runs as a subprocess on 127.0.0.1 (free port, log level warning), pinned to CPU 0
with `taskset -c 0` when available; the load generator runs in separate process(es) pinned
to CPU 1. Every scenario is bounded by --total activations and --seconds. Each activation is
verified strictly (every check of spec §12.8); latency is connect → verified answer.
Server CPU % (utime+stime from /proc/PID/stat over the scenario's wall time) and client CPU %
(process time of the load-generator processes over their run time) show which side was the
bottleneck. The client does more work per activation than the server (it encrypts, decrypts
its own request again inside verify_response, decrypts and checks the answer), so with one
client core the figures are a lower bound for the server; --client-procs N splits the load
over N processes (all pinned to CPU 1 when pinning, so this only helps on larger machines
where you drop the pinning or widen it).
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.pool
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kmsgate.catalog import default_catalog
from kmsgate.client.activation import KmsClient
from kmsgate.client.exchange import RequestTemplate
from kmsgate.client.loadgen import LoadResult, LoadSettings, percentile, run_load, run_sync

HOST = "127.0.0.1"
PRODUCT = "Windows 10/11 Pro"
KMSGATE = Path(sys.executable).with_name("kmsgate")


@dataclass(frozen=True)
class Scenario:
    name: str
    protocol: int
    concurrency: int
    per_connection: int  # 1 = fresh connection per activation


SCENARIOS = [
    Scenario("v6 fresh, C=1", 6, 1, 1),
    Scenario("v6 fresh, C=8", 6, 8, 1),
    Scenario("v6 fresh, C=64", 6, 64, 1),
    Scenario("v6 1000/conn, C=8", 6, 8, 1000),
    Scenario("v5 fresh, C=8", 5, 8, 1),
    Scenario("v4 fresh, C=8", 4, 8, 1),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(
    port: int, pure_python: bool, pin: bool, record: bool, data_dir: str
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMSGATE_")}
    if pure_python:
        env["KMSGATE_PURE_PYTHON_CIPHER"] = "1"
    cmd = [str(KMSGATE), "serve", "--listen", f"{HOST}:{port}", "--log-level", "warning"]
    cmd += ["--no-web", "--data-dir", data_dir] if record else ["--no-store"]
    if pin:
        cmd = ["taskset", "-c", "0", *cmd]  # taskset execs the server: same PID
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise SystemExit(f"kmsgate serve exited: {err}")
        with socket.socket() as sock:
            if sock.connect_ex((HOST, port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("kmsgate serve did not start")


def _client_process(
    args: tuple[int, int, int, int, int, float, bool],
) -> tuple[int, int, float, dict[str, int], list[float], int, bool, float]:
    """One load-generator process (picklable arguments and results)."""
    port, protocol, concurrency, per_connection, total, seconds, pin = args
    if pin:
        os.sched_setaffinity(0, {1})
    sku = default_catalog().resolve_product(PRODUCT)
    client = KmsClient(RequestTemplate.from_sku(sku, protocol=protocol), timeout=10.0)
    settings = LoadSettings(
        total=total,
        concurrency=concurrency,
        duration_limit=seconds,
        requests_per_connection=per_connection,
    )
    cpu_before = time.process_time()
    result = run_sync(run_load(client, HOST, port, settings))
    return (
        result.attempted,
        result.succeeded,
        result.elapsed,
        dict(result.errors),
        result.latencies,
        result.connections,
        result.stopped_by_time,
        time.process_time() - cpu_before,
    )


def run_scenario(
    pool: multiprocessing.pool.Pool,
    procs: int,
    port: int,
    scenario: Scenario,
    total: int,
    seconds: float,
    pin: bool,
) -> tuple[LoadResult, float]:
    """Split the load over `procs` client processes; merged result and client CPU seconds."""
    shares = [total // procs + (1 if i < total % procs else 0) for i in range(procs)]
    conc = [max(1, scenario.concurrency // procs) for _ in range(procs)]
    jobs = [
        (port, scenario.protocol, c, scenario.per_connection, n, seconds, pin)
        for n, c in zip(shares, conc, strict=True)
        if n
    ]
    merged = LoadResult(
        LoadSettings(
            total=total,
            concurrency=scenario.concurrency,
            duration_limit=seconds,
            requests_per_connection=scenario.per_connection,
        )
    )
    client_cpu = 0.0
    for attempted, succeeded, elapsed, errors, latencies, conns, timed, cpu in pool.map(
        _client_process, jobs
    ):
        client_cpu += cpu
        part = LoadResult(merged.settings, attempted, succeeded, elapsed, latencies=latencies)
        part.errors.update(errors)
        part.connections = conns
        part.stopped_by_time = timed
        merged.merge(part)
    return merged, client_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pure-python", action="store_true", help="server without C cipher")
    parser.add_argument("--client-procs", type=int, default=1, help="load-generator processes")
    parser.add_argument("--total", type=int, default=3000, help="activations per scenario")
    parser.add_argument("--seconds", type=float, default=15.0, help="time limit per scenario")
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario; best shown")
    parser.add_argument(
        "--record", action="store_true", help="server records into SQLite (default: --no-store)"
    )
    args = parser.parse_args()
    if not 1 <= args.client_procs <= 16 or not 1 <= args.total <= 100_000:
        raise SystemExit("--client-procs 1..16 and --total 1..100000")
    if not 1 <= args.repeat <= 10:
        raise SystemExit("--repeat 1..10")
    if not 0 < args.seconds <= 120:
        raise SystemExit("--seconds must be in (0, 120]")

    cpus = os.sched_getaffinity(0)
    pin = shutil.which("taskset") is not None and {0, 1} <= cpus
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="kmsgate-bench-")
    server = start_server(port, args.pure_python, pin, args.record, data_dir)
    ctx = multiprocessing.get_context("spawn")
    rows = []
    try:
        time.sleep(0.5)
        idle_rss = rss_kib(server.pid)
        with ctx.Pool(args.client_procs) as pool:
            # Warm-up (imports, caches, first ePIDs) is not measured.
            run_scenario(pool, args.client_procs, port, SCENARIOS[1], 200, 10, pin)
            for scenario in SCENARIOS:
                runs = []
                for _ in range(args.repeat):
                    cpu_before, wall_before = cpu_seconds(server.pid), time.perf_counter()
                    result, client_cpu = run_scenario(
                        pool, args.client_procs, port, scenario, args.total, args.seconds, pin
                    )
                    wall = time.perf_counter() - wall_before
                    used = cpu_seconds(server.pid) - cpu_before
                    server_cpu = used / wall * 100
                    per_activation = used / max(result.succeeded, 1) * 1e6
                    runs.append(
                        (result, server_cpu, client_cpu / result.elapsed * 100, per_activation)
                    )
                    time.sleep(0.2)
                # Best run: other processes on a shared machine only ever make a run slower.
                best = max(runs, key=lambda run: run[0].activations_per_second)
                rows.append((scenario, *best))
        after_rss = rss_kib(server.pid)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)

    shutil.rmtree(data_dir, ignore_errors=True)
    backend = "pure-Python cipher" if args.pure_python else "C cipher"
    backend += ", recording into SQLite" if args.record else ", no store"
    where = "server on CPU 0, client on CPU 1" if pin else "unpinned"
    print(
        f"\nkmsgate serve ({backend}), {where}, {args.client_procs} client process(es); "
        f"each scenario at most {args.total} activations or {args.seconds:g} s, "
        f"best of {args.repeat} runs\n"
    )
    print(
        "| scenario | activations | act/s | p50 ms | p99 ms | max ms | errors "
        "| server CPU | server CPU µs/act | client CPU |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for scenario, result, server_cpu, client_cpu, per_activation in rows:
        ordered = sorted(result.latencies)
        errors = ", ".join(f"{n} {k}" for k, n in sorted(result.errors.items())) or "0"
        print(
            f"| {scenario.name} | {result.succeeded}/{result.attempted} "
            f"| {result.activations_per_second:.0f} "
            f"| {percentile(ordered, 0.5) * 1000:.2f} | {percentile(ordered, 0.99) * 1000:.2f} "
            f"| {(ordered[-1] if ordered else 0) * 1000:.2f} | {errors} | {server_cpu:.0f} % "
            f"| {per_activation:.0f} | {client_cpu:.0f} % |"
        )
    print(
        f"\nserver RSS: {idle_rss / 1024:.1f} MiB idle after start, "
        f"{after_rss / 1024:.1f} MiB after the load"
    )


if __name__ == "__main__":
    main()
