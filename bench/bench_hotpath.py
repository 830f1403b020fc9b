"""In-process cost of the KMS host's own Python work per connection and per request (by hand).

Usage: .venv/bin/python bench/bench_hotpath.py [--log-level info|warning] [--connections N]
       [--requests N] [--repeat 5] [--profile FILE.pstats] [--instructions [--record]]

Drives a real KmsHost and KmsConnection (no sockets: a fake transport collects the answers)
through the v6 NDR32 exchange of tests/vectors/v6_win10ent_ndr32.json, its request re-encoded
with the current time so the host serves it with default settings. Logging is set up as
`kmsgate serve` does (text format) but writes to /dev/null. Prints the best of --repeat runs:
µs per fresh connection (accept, bind, one request, close) and µs per kept-alive request, in
this process's CPU time (other load on a shared machine disturbs that less than wall time).
The timed runs record nothing (recording is measured by bench_recording.py, or counted with
--instructions --record below); not run by CI.

--instructions counts machine instructions instead, under valgrind's callgrind (a few
minutes): the difference between a run of N and a run of none, divided by N. Repeatable to
a fraction of a per cent whatever else the machine runs, where CPU times drift by tens of
per cent on a shared machine: the measure for changes of a few per cent.

--record (with --instructions) serves as the default node does: each answer's record handed
over to an inline writer (kmsgate.recording.inline) into SQLite in a temporary directory,
and counted until committed. The host serves RECORD_STEP requests, then waits for the
writer, so every batch holds RECORD_STEP records whatever valgrind's pace (a batch the
size a busy node writes). The seen-machines sync, a timer, is left out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from kmsgate.config.settings import ServeSettings
from kmsgate.observability.logs import setup_logging
from kmsgate.protocol import ndr, rpc
from kmsgate.protocol.engine import filetime_from_unix
from kmsgate.protocol.messages import decode_request, encode_request
from kmsgate.protocol.ndr import TransferSyntax
from kmsgate.recording.inline import InlineWriter
from kmsgate.recording.recorder import ActivationRecorder
from kmsgate.server.connection import KmsConnection
from kmsgate.server.host import KmsHost
from kmsgate.store.database import Store

VECTOR = Path(__file__).resolve().parent.parent / "tests/vectors/v6_win10ent_ndr32.json"
# Requests served between two waits for the writer under --record: the inline writer's batch.
RECORD_STEP = 2000


class FakeTransport:
    """What KmsConnection uses of an asyncio transport; answers are counted, not sent."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self._peer = peer
        self.closing = False
        self.written = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peer
        if name == "sockname":
            return ("127.0.0.1", 1688)
        return default

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def exchange() -> tuple[bytes, bytes]:
    """The vector's bind PDU and its request PDU, the request re-encoded at the current time."""
    pdus = [bytes.fromhex(p["hex"]) for p in json.loads(VECTOR.read_text())["pdus"]]
    bind, request_raw = pdus[0], pdus[2]
    request = rpc.decode_pdu(request_raw)
    assert isinstance(request, rpc.Request)
    message = ndr.unwrap_request(request.stub, TransferSyntax.NDR32)
    now = filetime_from_unix(time.time())
    fresh = dataclasses.replace(decode_request(message).request, request_time=now)
    stub = ndr.wrap_request(encode_request(fresh, message[4:20]), TransferSyntax.NDR32)
    pdu = rpc.encode_pdu(rpc.Request(request.call_id, request.context_id, 0, stub))
    return bind, pdu


def fresh_connections(host: KmsHost, bind: bytes, request: bytes, count: int) -> float:
    """CPU seconds for `count` connections of one bind and one request each."""
    started = time.process_time()
    for index in range(count):
        transport = FakeTransport(("127.0.0.1", 10000 + index % 50000))
        connection = KmsConnection(host)
        connection.connection_made(transport)  # type: ignore[arg-type]
        connection.data_received(bind)
        connection.data_received(request)
        connection.connection_lost(None)
    return time.process_time() - started


def kept_alive(host: KmsHost, bind: bytes, request: bytes, count: int, per_conn: int) -> float:
    """CPU seconds in data_received for `count` requests, `per_conn` on each connection."""
    spent = 0.0
    done = 0
    while done < count:
        transport = FakeTransport(("127.0.0.1", 40000))
        connection = KmsConnection(host)
        connection.connection_made(transport)  # type: ignore[arg-type]
        connection.data_received(bind)
        batch = min(per_conn, count - done)
        receive = connection.data_received
        started = time.process_time()
        for _ in range(batch):
            receive(request)
        spent += time.process_time() - started
        done += batch
        connection.connection_lost(None)
    return spent


async def measure(args: argparse.Namespace) -> None:
    host = KmsHost(ServeSettings(listen=["127.0.0.1:0"]))  # type: ignore[call-arg]
    bind, request = exchange()
    # Check once that the exchange is served, not refused (a stale clock would be).
    probe = FakeTransport(("127.0.0.1", 9))
    probe_conn = KmsConnection(host)
    probe_conn.connection_made(probe)  # type: ignore[arg-type]
    probe_conn.data_received(bind)
    probe_conn.data_received(request)
    probe_conn.connection_lost(None)
    if host.stats.activations != 1:
        sys.exit(f"the exchange was not served: {host.stats}")
    per_conn = min(500, host.settings.max_requests_per_connection or 500)
    connections, requests = args.connections, args.requests
    runs: list[tuple[Callable[[], float], int, str]] = [
        (lambda: fresh_connections(host, bind, request, connections), connections, "fresh"),
        (lambda: kept_alive(host, bind, request, requests, per_conn), requests, "kept"),
    ]
    profiler = cProfile.Profile() if args.profile else None
    for run, count, label in runs:
        run()  # warm-up
        best = float("inf")
        for _ in range(args.repeat):
            if profiler is not None:
                profiler.enable()
            seconds = run()
            if profiler is not None:
                profiler.disable()
            best = min(best, seconds)
        name = "µs per fresh connection" if label == "fresh" else "µs per kept-alive request"
        print(f"{name:28s} {1e6 * best / count:7.2f}  (best of {args.repeat}, n={count})")
    if profiler is not None:
        profiler.dump_stats(args.profile)


async def run_only(kind: str, count: int, record: bool) -> None:
    """Serve `count` fresh connections or kept-alive requests after a warm-up (--child)."""
    host = KmsHost(ServeSettings(listen=["127.0.0.1:0"]))  # type: ignore[call-arg]
    bind, request = exchange()
    run = fresh_connections if kind == "fresh" else kept_alive_requests
    if not record:
        run(host, bind, request, 500)
        if count:
            run(host, bind, request, count)
    else:
        async with recording(host) as writer:
            await served_and_written(run, host, bind, request, 500, writer)
            if count:
                await served_and_written(run, host, bind, request, count, writer)
            if writer.written != 500 + count or writer.dropped:
                sys.exit(f"records written {writer.written}, dropped {writer.dropped}")
            print(f"served {host.stats.activations}, records written {writer.written}")
    if host.stats.activations != 500 + count:
        sys.exit(f"the exchange was not served: {host.stats}")


@contextlib.asynccontextmanager
async def recording(host: KmsHost) -> AsyncIterator[InlineWriter]:
    """The default node's recording, on a SQLite store in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="kmsgate-hotpath-") as folder:
        store = await Store.open(f"sqlite:///{Path(folder) / 'kmsgate.db'}")
        writer = InlineWriter(store, node="hotpath", ring_path=Path(folder) / "records.ring")
        try:
            await writer.start()
            host.event_hooks.append(ActivationRecorder(writer.submit, host.catalog, node="hotpath"))
            host.record_gate = writer
            yield writer
        finally:
            await writer.close()
            await store.close()


async def served_and_written(
    run: Callable[[KmsHost, bytes, bytes, int], float],
    host: KmsHost,
    bind: bytes,
    request: bytes,
    count: int,
    writer: InlineWriter,
) -> None:
    """Serve `count` in steps of RECORD_STEP, each step's records committed before the next."""
    done = 0
    while done < count:
        step = min(RECORD_STEP, count - done)
        run(host, bind, request, step)
        done += step
        if not writer.hand_over():
            sys.exit("the record ring had no room for one step")
        while writer.depth:
            # Rare wake-ups: the loop's own turns add instructions with valgrind's wall time.
            await asyncio.sleep(0.2)


def kept_alive_requests(host: KmsHost, bind: bytes, request: bytes, count: int) -> float:
    return kept_alive(host, bind, request, count, 500)


COLLECTED = re.compile(r"Collected : ([\d,]+)")


def instructions(args: argparse.Namespace) -> None:
    """Instructions per fresh connection and per kept-alive request, from callgrind."""
    if shutil.which("valgrind") is None:
        sys.exit("--instructions needs valgrind (Debian package valgrind)")
    # String hashes seeded alike in every run: dict probes, and so counts, repeat exactly.
    env = {**os.environ, "PYTHONHASHSEED": "0"}

    def collected(kind: str, count: int) -> int:
        cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
               __file__, "--log-level", args.log_level, "--child", kind, str(count)]  # fmt: skip
        if args.record:
            cmd.append("--record")
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        found = COLLECTED.search(done.stderr)
        if found is None:
            sys.exit(f"callgrind printed no total:\n{done.stderr[-2000:]}")
        return int(found.group(1).replace(",", ""))

    for kind, count, name in (
        ("fresh", args.connections, "instructions per fresh connection"),
        ("kept", args.requests, "instructions per kept-alive request"),
    ):
        per = (collected(kind, count) - collected(kind, 0)) / count
        recorded = ", records committed" if args.record else ""
        print(f"{name:36s} {per:9.0f}  (n={count}{recorded})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", help="write cProfile stats of the timed runs here")
    parser.add_argument("--instructions", action="store_true", help="count instructions")
    parser.add_argument(
        "--record", action="store_true", help="with --instructions: record into SQLite too"
    )
    parser.add_argument("--child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.record and not (args.instructions or args.child):
        parser.error("--record counts instructions: add --instructions")
    if args.instructions:
        instructions(args)
        return
    setup_logging(args.log_level)
    devnull = Path(os.devnull).open("w")  # noqa: SIM115 (open for the whole run)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(devnull)
    job = (
        measure(args)
        if args.child is None
        else run_only(args.child[0], int(args.child[1]), args.record)
    )
    try:
        import uvloop
    except ImportError:
        asyncio.run(job)
    else:
        uvloop.run(job)


if __name__ == "__main__":
    main()
