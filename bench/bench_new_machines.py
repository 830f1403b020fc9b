#!/usr/bin/env python3
"""The default node when every activation comes from a machine it has never seen (by hand).

A fleet's first day, or a client that invents CMIDs, makes every record a new client: a new
row in six indexes and the search index, where the replayed request of bench_ceiling.py only
renews one client. This benchmark encodes a pool of v6 requests (random CMIDs and
DESKTOP-XXXXXXX names, the project's own encoder), and bench/poolload.c (compiled here)
sends each once, on a fresh connection each, from CPU 1 to the node pinned to CPU 0. After
each run the node is stopped and its database counted: every answer must be a stored record.

Usage: bench/bench_new_machines.py [--rounds 2] [--seconds 6] [--concurrency 8]
           [--pool 200000] [--log-level warning] [--other 'OLD/kmsgate serve ... {port} {data}']
`--other` is another kmsgate's command, as in bench_ceiling.py ({port}, {data}).
Prints one line per run (rate, CPU per activation, p50/p99, PSS, stored records). Bounded:
at most 10 rounds of at most 60 s, and never more requests than the pool holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ceiling import (
    HOST,
    KMSGATE,
    VECTOR,
    cpu_seconds,
    free_port,
    memory,
    pinned,
    stop_group,
    wait_listening,
)

from kmsgate.protocol import ndr, rpc
from kmsgate.protocol.engine import filetime_from_unix
from kmsgate.protocol.messages import decode_request, encode_request
from kmsgate.protocol.ndr import TransferSyntax

LOADGEN = Path(__file__).resolve().with_name("poolload.c")


def write_pool(workdir: Path, count: int) -> tuple[Path, Path, int]:
    """The vector's bind PDU, and `count` request PDUs of one size, each a new machine."""
    pdus = json.loads(VECTOR.read_text())["pdus"]
    bind = bytes.fromhex(next(p["hex"] for p in pdus if p["ptype"] == 11))
    captured = rpc.decode_pdu(bytes.fromhex(next(p["hex"] for p in pdus if p["ptype"] == 0)))
    assert isinstance(captured, rpc.Request)
    message = ndr.unwrap_request(captured.stub, TransferSyntax.NDR32)
    base = decode_request(message).request
    rng = random.Random(14)
    now = filetime_from_unix(time.time())
    size = 0
    pool_path = workdir / "pool.bin"
    with pool_path.open("wb") as pool:
        for _ in range(count):
            request = dataclasses.replace(
                base,
                request_time=now,
                client_machine_id=uuid.UUID(int=rng.getrandbits(128), version=4),
                machine_name=f"DESKTOP-{rng.getrandbits(28):07X}",
            )
            stub = ndr.wrap_request(
                encode_request(request, rng.randbytes(16)), TransferSyntax.NDR32
            )
            pdu = rpc.encode_pdu(rpc.Request(captured.call_id, captured.context_id, 0, stub))
            if size and len(pdu) != size:
                raise SystemExit("requests of different sizes: poolload takes one size")
            size = len(pdu)
            pool.write(pdu)
    bind_path = workdir / "bind.bin"
    bind_path.write_bytes(bind)
    return bind_path, pool_path, size


def stored(data: Path) -> dict[str, int]:
    """Activations and clients in a node's SQLite database (after it stopped)."""
    path = data / "kmsgate.db"
    if not path.exists():
        return {}
    with sqlite3.connect(path) as db:
        activations = db.execute("SELECT count(*) FROM activations").fetchone()[0]
        clients = db.execute("SELECT count(*) FROM clients").fetchone()[0]
    return {"activations": int(activations), "clients": int(clients)}


def run(name: str, workdir: Path, load: list[str], args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
    if name == "kmsgate":
        subprocess.run([str(KMSGATE), "db", "upgrade", "--data-dir", str(data)],
                       check=True, capture_output=True)  # fmt: skip
        cmd = [str(KMSGATE), "serve", "--listen", f"{HOST}:{port}", "--data-dir", str(data),
               "--max-clock-skew", "0", "--web", f"{HOST}:0",
               "--log-level", args.log_level]  # fmt: skip
    else:
        cmd = shlex.split(args.other.format(port=port, data=data))
    proc = subprocess.Popen(
        pinned(cmd, 0), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_listening(proc, port)
        time.sleep(1.0)
        before = cpu_seconds(proc.pid)
        done = subprocess.run(
            pinned([*load[:1], str(port), *load[1:]], 1),
            check=True, capture_output=True, text=True, timeout=args.seconds + 60,
        )  # fmt: skip
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        spent = cpu_seconds(proc.pid) - before
        result["cpu_us"] = round(spent / max(result["answered"], 1) * 1e6, 1)
        result["loaded"] = memory(proc.pid)
    finally:
        stop_group(proc, 30)  # the writer commits what it holds before the count
    result["stored"] = stored(data)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pool", type=int, default=200_000)
    parser.add_argument("--log-level", default="warning", choices=["info", "warning"])
    parser.add_argument("--other", help="another kmsgate's command with {port} and {data}")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 10 or not 0 < args.seconds <= 60 or args.pool < 1:
        parser.error("1-10 rounds of at most 60 s, and a pool of at least one request")
    if shutil.which("gcc") is None:
        parser.error("poolload.c needs gcc")
    with tempfile.TemporaryDirectory(prefix="kmsgate-newmachines-") as tmp:
        workdir = Path(tmp)
        binary = workdir / "poolload"
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(LOADGEN)], check=True)
        bind, pool, size = write_pool(workdir, args.pool)
        load = [str(binary), str(args.concurrency), str(args.seconds), str(bind), str(pool),
                str(size)]  # fmt: skip
        names = ["kmsgate"] + (["other"] if args.other else [])
        print(f"{args.rounds} rounds of {args.seconds:g} s, concurrency {args.concurrency}, "
              f"a pool of {args.pool} new machines")  # fmt: skip
        for round_number in range(1, args.rounds + 1):
            order = names if round_number % 2 else names[::-1]
            for name in order:
                r = run(name, workdir, load, args)
                kept = r["stored"]
                print(f"round {round_number} {name:8s} {r['rate']:8.0f}/s cpu {r['cpu_us']:6.1f} µs"
                      f"  p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} ms  PSS "
                      f"{r['loaded']['pss_mib']} MiB  answered {r['answered']} failed "
                      f"{r['failed']}  stored {kept.get('activations')} activations, "
                      f"{kept.get('clients')} clients")  # fmt: skip
                if kept and kept["activations"] < r["answered"]:
                    print(f"  LOST: {r['answered'] - kept['activations']} answers not stored")
    return 0


if __name__ == "__main__":
    sys.exit(main())
