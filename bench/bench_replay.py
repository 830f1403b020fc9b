"""Server-bound activation benchmark: pre-built vlmcs-style PDUs, a fresh connection each (by hand).

Usage: .venv/bin/python bench/bench_replay.py [--concurrency 8] [--total 10000] [--seconds 15]
       [--protocol 6] [--record] [--db URL] [--clients N]
       [--rate R] [--server-cpu 0.5]

The strict client (bench_activations.py) spends more CPU per activation than the server, so on
a 2-core machine it saturates its core first. Here the client work is moved ahead of the run:
every request PDU is built beforehand (distinct CMIDs and IVs), each connection sends the
same bind / alter_context / request sequence as vlmcs, and checks the reply headers, call ids
and return code; one answer in 50 is decrypted and verified in full (every check of §12.8).
Server pinned to CPU 0, load on CPU 1 (when both exist). Bounded by --total and --seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from kmsgate.catalog import default_catalog
from kmsgate.client.exchange import RequestTemplate
from kmsgate.client.loadgen import percentile
from kmsgate.protocol import ndr, rpc
from kmsgate.protocol.client_session import ClientSession
from kmsgate.protocol.messages import encode_request
from kmsgate.protocol.verification import verify_response

HOST = "127.0.0.1"
CPU_CGROUP = Path("/sys/fs/cgroup/cpu")
KMSGATE = Path(sys.executable).with_name("kmsgate")
VERIFY_EVERY = 50


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) == 0


def build_requests(
    count: int, protocol: int, clients: int = 0
) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
    """(bind, alter_context, [(request PDU, KMS message)]) exactly as vlmcs sends them.

    clients=0: every request from a new machine (vlmcs's default); else requests cycle over
    that many machines, so all but the first `clients` are renewals of known ones.
    """
    sku = default_catalog().resolve_product("Windows 10/11 Pro")
    fleet = [
        RequestTemplate.from_sku(
            sku,
            protocol=protocol,
            client_machine_id=uuid.uuid4(),
            machine_name=f"LAB-{index:06d}",
        )
        for index in range(clients)
    ] or [RequestTemplate.from_sku(sku, protocol=protocol)]
    now = time.time()
    session = ClientSession()
    session.send_bind()
    bind = session.data_to_send()
    alter = rpc.encode_pdu(rpc.Bind(2, (session._contexts[0],), alter=True))
    requests = []
    for index in range(count):
        template = fleet[index % len(fleet)]
        message = encode_request(template.build(os.urandom, now), os.urandom(16))
        stub = ndr.wrap_request(message, ndr.TransferSyntax.NDR32)
        requests.append((rpc.encode_pdu(rpc.Request(2, 0, 0, stub)), message))
    return bind, alter, requests


async def read_pdu(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(16)
    (length,) = struct.unpack_from("<H", header, 8)
    return header + await reader.readexactly(length - 16)


async def one_activation(
    port: int, bind: bytes, alter: bytes, request: bytes, message: bytes, verify: bool
) -> float:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(bind)
        ack = await read_pdu(reader)
        if ack[2] != rpc.PType.BIND_ACK:
            raise RuntimeError(f"bind answered with PDU type {ack[2]}")
        writer.write(alter)
        if (await read_pdu(reader))[2] != rpc.PType.ALTER_CONTEXT_RESP:
            raise RuntimeError("alter_context not answered")
        writer.write(request)
        answer = await read_pdu(reader)
        if answer[2] != rpc.PType.RESPONSE or answer[12:16] != request[12:16]:
            raise RuntimeError("request not answered with its call id")
        stub = ndr.unwrap_response(answer[24:], ndr.TransferSyntax.NDR32)
        if stub.hresult or stub.message is None:
            raise RuntimeError(f"host returned 0x{stub.hresult:08X}")
        if verify:
            verify_response(message, stub.message).raise_for_failure()
    finally:
        writer.close()
    return time.perf_counter() - started


async def run(port: int, args: argparse.Namespace) -> tuple[list[float], int, float, float]:
    """(latencies, errors, seconds, CPU seconds this load generator used meanwhile)."""
    bind, alter, requests = build_requests(min(args.total, 20000), args.protocol, args.clients)
    latencies: list[float] = []
    errors = 0
    begin = time.monotonic()
    deadline = begin + args.seconds
    next_index = 0

    async def worker() -> None:
        nonlocal next_index, errors
        while next_index < args.total and time.monotonic() < deadline:
            index = next_index
            next_index += 1
            if args.rate:  # open loop: activation i starts at i / rate, if a worker is free
                await asyncio.sleep(begin + index / args.rate - time.monotonic())
            request, message = requests[index % len(requests)]
            try:
                latencies.append(
                    await one_activation(
                        port, bind, alter, request, message, index % VERIFY_EVERY == 0
                    )
                )
            except (OSError, RuntimeError, asyncio.IncompleteReadError) as exc:
                errors += 1
                if errors < 5:
                    print(f"error: {exc}", file=sys.stderr)

    started, own = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return latencies, errors, time.perf_counter() - started, time.process_time() - own


def describe_store(args: argparse.Namespace) -> str:
    fleet = f"{args.clients} machines" if args.clients else "a new machine per request"
    if args.db:
        return f"recording into {args.db.split(':', 1)[0]}, {fleet}"
    return f"recording into SQLite, {fleet}" if args.record else f"no store, {fleet}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--total", type=int, default=10000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--protocol", type=int, choices=(4, 5, 6), default=6)
    parser.add_argument("--record", action="store_true", help="server records into SQLite")
    parser.add_argument("--db", help="record into this database URL instead (e.g. PostgreSQL)")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="start activations at this rate per second (compare CPU at equal load)",
    )
    parser.add_argument(
        "--server-cpu",
        type=float,
        default=0.0,
        help="cap the serving process at this share of CPU 0 (e.g. 0.5), leaving the rest "
        "to the record writer process: the host's CPU becomes the bottleneck (root, cgroup v1)",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=0,
        help="cycle over this many machines (renewals); default: a new machine per request",
    )
    args = parser.parse_args()
    if not 1 <= args.concurrency <= 256 or not 1 <= args.total <= 200_000:
        raise SystemExit("--concurrency 1..256, --total 1..200000")
    args.seconds = min(max(args.seconds, 1.0), 120.0)
    if args.server_cpu and not 0.1 <= args.server_cpu <= 1.0:
        raise SystemExit("--server-cpu 0.1..1.0")

    pin = shutil.which("taskset") is not None and {0, 1} <= os.sched_getaffinity(0)
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="kmsgate-bench-")
    cmd = [str(KMSGATE), "serve", "--listen", f"{HOST}:{port}", "--log-level", "warning"]
    if args.db:
        cmd += ["--no-web", "--data-dir", data_dir, "--db", args.db]
    else:
        cmd += ["--no-web", "--data-dir", data_dir] if args.record else ["--no-store"]
    if pin:
        cmd = ["taskset", "-c", "0", *cmd]
        os.sched_setaffinity(0, {1})
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    quota_group = CPU_CGROUP / f"kmsgate-bench-{os.getpid()}"
    try:
        # Started and settled: on a busy machine the node may need more than a moment to listen.
        deadline = time.monotonic() + 60
        while not listening(port) and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.1)
        time.sleep(2.5)
        rss = Path(f"/proc/{server.pid}/status").read_text().split("VmRSS:")[1].split()[0]
        ticks = os.sysconf("SC_CLK_TCK")

        # The record writer process (--store-writer process) would inherit CPU 0; in
        # production nothing is pinned, so it goes where the scheduler finds room: CPU 1 here.
        children = [
            int(pid)
            for task in Path(f"/proc/{server.pid}/task").iterdir()
            for pid in (task / "children").read_text().split()
        ]
        if pin:
            for child in children:
                os.sched_setaffinity(child, {1})
        if args.server_cpu:
            cap_cpu(server.pid, args.server_cpu, quota_group)
        child_rss = sum(
            int(Path(f"/proc/{child}/status").read_text().split("VmRSS:")[1].split()[0])
            for child in children
        )

        def cpu(pid: int = server.pid) -> float:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / ticks

        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            runner = asyncio.run
        before, children_before = cpu(), sum(cpu(child) for child in children)
        latencies, errors, elapsed, own = runner(run(port, args))
        used = cpu() - before
        writer_used = sum(cpu(child) for child in children) - children_before
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=20)
        if quota_group.exists():
            quota_group.rmdir()  # empty once the server has exited
        recorded = count_recorded(Path(data_dir) / "kmsgate.db")
        shutil.rmtree(data_dir, ignore_errors=True)
    ordered = sorted(latencies)
    writer = (
        f"writer process CPU {writer_used / elapsed * 100:.0f} %, "
        f"idle RSS {child_rss / 1024:.1f} MiB; "
        if children
        else ""
    )
    print(
        f"v{args.protocol} fresh connection per activation, concurrency {args.concurrency}, "
        f"{f'paced at {args.rate:.0f}/s, ' if args.rate else ''}"
        f"{describe_store(args)}, "
        f"{'server on CPU 0, load on CPU 1' if pin else 'unpinned'}"
    )
    print(
        f"{len(ordered)} activations, {errors} errors in {elapsed:.1f} s: "
        f"{len(ordered) / elapsed:.0f} activations/s, p50 {percentile(ordered, 0.5) * 1e3:.2f} ms, "
        f"p99 {percentile(ordered, 0.99) * 1e3:.2f} ms; server CPU {used / elapsed * 100:.0f} % "
        f"({used / max(len(ordered), 1) * 1e6:.0f} µs/activation); "
        f"load generator CPU {own / elapsed * 100:.0f} %; {writer}"
        f"idle RSS {int(rss) / 1024:.1f} MiB"
        + (f"; {recorded} activations stored" if recorded is not None else "")
    )


def cap_cpu(pid: int, share: float, group: Path) -> None:
    """Limit one process to `share` of a CPU (cgroup v1 CFS quota, 10 ms periods; root)."""
    if not CPU_CGROUP.is_dir():
        raise SystemExit(f"--server-cpu needs the cgroup v1 cpu controller at {CPU_CGROUP}")
    group.mkdir()
    (group / "cpu.cfs_period_us").write_text("10000")
    (group / "cpu.cfs_quota_us").write_text(str(int(10000 * share)))
    (group / "cgroup.procs").write_text(str(pid))  # all its threads; its children stay out


def count_recorded(path: Path) -> int | None:
    """Rows in the embedded database's activations table, None without one."""
    import sqlite3

    if not path.exists():
        return None
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT count(*) FROM activations").fetchone()[0])


if __name__ == "__main__":
    main()
