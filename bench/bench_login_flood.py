"""KMS throughput while the dashboard's login is flooded with wrong passwords (by hand).

Usage: .venv/bin/python bench/bench_login_flood.py [--seconds 10] [--repeat 3] [--no-pin]
       [--pure-python] [--nice -10]

One `kmsgate serve` (SQLite store, record writer process, web listener, an admin whose hash
has the production argon2 costs) is pinned to CPU 0 with everything it starts. The KMS load
(bench_replay's pre-built vlmcs sequences, concurrency 8) and the flood run on CPU 1. Every
repetition runs each scenario once, in a rotating order, so the runs being compared are
interleaved: no flood; 11 wrong logins a second (the issue's rate); as many as the hashing
pool takes (9 clients waiting for their answers); and an overload of 32 such clients, most of
them answered 503. Each attempt comes from its own loopback address with its own user name,
so the login throttle never steps in and every attempt costs a real argon2 check.
Reports activations/s per run and, per repetition, the ratio to the run without a flood.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench_replay import build_requests, one_activation

HOST = "127.0.0.1"
KMSGATE = Path(sys.executable).with_name("kmsgate")
ADMIN_PASSWORD = "correct horse battery staple"
SCENARIOS = ("none", "11/s", "pool", "overload")
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
COOKIE_RE = re.compile(r"set-cookie: (kmsgate_login_csrf=[^;]+)", re.I)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


PINNED = os.environ.get("KMSGATE_BENCH_PIN", "1") == "1"
PRIORITY = int(os.environ.get("KMSGATE_BENCH_NICE", "0"))
CONCURRENCY = int(os.environ.get("KMSGATE_BENCH_CONCURRENCY", "8"))


def pin(cpu: int) -> None:
    if PINNED and {0, 1} <= os.sched_getaffinity(0):
        os.sched_setaffinity(0, {cpu})
    if PRIORITY:
        os.setpriority(os.PRIO_PROCESS, 0, PRIORITY)


# ---------------------------------------------------------------- KMS load (CPU 1)


def kms_load(args: tuple[int, float]) -> tuple[int, int, float]:
    """(activations, errors, seconds) of a concurrency-8 load for `seconds`."""
    port, seconds = args
    pin(1)
    bind, alter, requests = build_requests(20_000, 6)

    async def run() -> tuple[int, int, float]:
        done = errors = 0
        deadline = time.monotonic() + seconds
        index = 0

        async def worker() -> None:
            nonlocal done, errors, index
            while time.monotonic() < deadline:
                request, message = requests[index % len(requests)]
                index += 1
                try:
                    await one_activation(port, bind, alter, request, message, index % 50 == 0)
                    done += 1
                except (OSError, RuntimeError, asyncio.IncompleteReadError):
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return done, errors, time.perf_counter() - started

    return asyncio.run(run())


# ---------------------------------------------------------------- login flood (CPU 1)


def login_form(web_port: int) -> tuple[str, str]:
    """(CSRF cookie, CSRF token) of the login form, reused by every flood request."""
    with socket.create_connection((HOST, web_port)) as sock:
        sock.sendall(b"GET /login HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        page = b""
        while chunk := sock.recv(65536):
            page += chunk
    text = page.decode()
    cookie, token = COOKIE_RE.search(text), CSRF_RE.search(text)
    assert cookie and token, text[:500]
    return cookie.group(1), token.group(1)


def flood(args: tuple[int, str, float, int]) -> dict[str, Any]:
    """Wrong logins for `seconds`: mode '11/s' paced, or 'pool'/'overload' closed-loop."""
    web_port, mode, seconds, first = args
    pin(1)
    cookie, token = login_form(web_port)
    statuses: Counter[str] = Counter()

    async def attempt(n: int) -> None:
        source = f"127.{1 + n // 65025 % 250}.{n // 255 % 255}.{1 + n % 254}"
        body = f"username=flood-{n}&password=wrong-{n}&csrf_token={token}".encode()
        head = (
            f"POST /login HTTP/1.1\r\nHost: bench\r\nCookie: {cookie}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(HOST, web_port, local_addr=(source, 0)), 30
            )
            writer.write(head + body)
            line = await asyncio.wait_for(reader.readline(), 60)
            statuses[line.split(b" ")[1].decode() if line else "closed"] += 1
            writer.close()
        except (OSError, TimeoutError, IndexError) as exc:
            statuses[type(exc).__name__] += 1

    async def run() -> float:
        started = time.monotonic()
        deadline = started + seconds
        counter = iter(range(first, first + 10**7))
        if mode == "11/s":
            tasks = []
            for n in counter:
                wake = started + (n - first) / 11
                if wake >= deadline:
                    break
                await asyncio.sleep(max(0.0, wake - time.monotonic()))
                tasks.append(asyncio.create_task(attempt(n)))
            await asyncio.gather(*tasks)
        else:

            async def worker() -> None:
                while time.monotonic() < deadline:
                    await attempt(next(counter))

            await asyncio.gather(*(worker() for _ in range(9 if mode == "pool" else 32)))
        return time.monotonic() - started

    elapsed = asyncio.run(run())
    return {"statuses": dict(statuses), "elapsed": elapsed}


# ---------------------------------------------------------------- the node (CPU 0)


def start_node(
    data_dir: Path, kms_port: int, web_port: int, pure_python: bool
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KMSGATE_")}
    if pure_python:
        env["KMSGATE_PURE_PYTHON_CIPHER"] = "1"
    subprocess.run(
        [str(KMSGATE), "users", "add", "admin", "--admin", "--password-stdin",
         "--data-dir", str(data_dir)],
        input=f"{ADMIN_PASSWORD}\n".encode(), check=True, env=env, capture_output=True,
    )  # fmt: skip
    cmd = [
        str(KMSGATE), "serve", "--listen", f"{HOST}:{kms_port}", "--web", f"{HOST}:{web_port}",
        "--data-dir", str(data_dir), "--log-level", "warning",
    ]  # fmt: skip
    if PINNED and shutil.which("taskset") and {0, 1} <= os.sched_getaffinity(0):
        cmd = ["taskset", "-c", "0", *cmd]  # children and threads inherit CPU 0
    if PRIORITY:
        cmd = ["nice", "-n", str(PRIORITY), *cmd]
    log = (data_dir / "serve.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    for port in (kms_port, web_port):
        while True:
            if proc.poll() is not None:
                raise SystemExit((data_dir / "serve.log").read_text())
            with socket.socket() as sock:
                if sock.connect_ex((HOST, port)) == 0:
                    break
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("kmsgate serve did not start")
            time.sleep(0.05)
    return proc


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of every scenario")
    parser.add_argument("--no-pin", action="store_true", help="let the scheduler place all")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run node, load and flood at this nice value (below 0 needs root): other work "
        "on a shared machine then disturbs the comparison less; the hashing pool still runs "
        "at nice 19",
    )
    parser.add_argument(
        "--pure-python",
        action="store_true",
        help="node without the C cipher: the node, not the load generator, is the bottleneck",
    )
    args = parser.parse_args()
    global PINNED, PRIORITY
    # Read again by the spawned load and flood processes.
    os.environ["KMSGATE_BENCH_PIN"] = "0" if args.no_pin else "1"
    os.environ["KMSGATE_BENCH_NICE"] = str(args.nice)
    PINNED, PRIORITY = not args.no_pin, args.nice
    if not 1 <= args.seconds <= 60 or not 1 <= args.repeat <= 10:
        raise SystemExit("--seconds 1..60, --repeat 1..10")
    data_dir = Path(tempfile.mkdtemp(prefix="kmsgate-flood-"))
    kms_port, web_port = free_port(), free_port()
    node = start_node(data_dir, kms_port, web_port, args.pure_python)
    ctx = multiprocessing.get_context("spawn")
    results: dict[str, list[float]] = {name: [] for name in SCENARIOS}
    floods: dict[str, Counter[str]] = {name: Counter() for name in SCENARIOS}
    cpu: dict[str, list[float]] = {name: [] for name in SCENARIOS}
    first = 0
    try:
        with ctx.Pool(2) as pool:
            pool.apply(kms_load, ((kms_port, 2.0),))  # warm-up, not measured
            for repetition in range(args.repeat):
                order = SCENARIOS[repetition % 4 :] + SCENARIOS[: repetition % 4]
                for name in order:
                    flooding = None
                    if name != "none":
                        flooding = pool.apply_async(
                            flood, ((web_port, name, args.seconds + 1, first),)
                        )
                        first += 100_000
                        time.sleep(0.5)  # the flood is in full swing when the load starts
                    before = cpu_seconds(node.pid)
                    done, errors, elapsed = pool.apply(kms_load, ((kms_port, args.seconds),))
                    cpu[name].append((cpu_seconds(node.pid) - before) / elapsed * 100)
                    if flooding is not None:
                        floods[name].update(flooding.get(120)["statuses"])
                    rate = done / elapsed
                    results[name].append(rate)
                    print(f"run {repetition + 1} {name:>8}: {rate:7.0f} act/s, {errors} errors",
                          flush=True)  # fmt: skip
                    time.sleep(1.0)
    finally:
        node.send_signal(signal.SIGINT)
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            node.kill()
        shutil.rmtree(data_dir, ignore_errors=True)
    where = "node on CPU 0, load and flood on CPU 1" if PINNED else "unpinned"
    where += ", pure-Python cipher" if args.pure_python else ", C cipher"
    where += f", nice {PRIORITY}" if PRIORITY else ""
    print(f"\n{args.repeat} interleaved repetitions of {args.seconds:g} s each, {where}\n")
    print("| flood | act/s per run | ratio to no flood per run | server CPU | login answers |")
    print("|---|---|---|---:|---|")
    for name in SCENARIOS:
        rates = results[name]
        ratios = [r / base for r, base in zip(rates, results["none"], strict=True)]
        answers = ", ".join(f"{n}×{s}" for s, n in sorted(floods[name].items())) or "-"
        print(
            f"| {name} | {' / '.join(f'{r:.0f}' for r in rates)} "
            f"| {' / '.join(f'{r:.2f}' for r in ratios)} "
            f"| {sum(cpu[name]) / len(cpu[name]):.0f} % | {answers} |"
        )
    print(json.dumps({"rates": results}, indent=None))


if __name__ == "__main__":
    main()
