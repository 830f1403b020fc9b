"""Recording's cost as paired runs: no store and recording, side by side (by hand).

Usage: .venv/bin/python bench/bench_recording.py [--rounds 3] [--seconds 15] [--server-cpu 0.5]
       [-- bench_replay options for the recording node, e.g. --record --clients 2000]

This machine's speed drifts by ±20 % within a minute, which swamps a few per cent between
runs made one after the other. Here both nodes run at the same time, each from its own
bench_replay.py (server capped at --server-cpu of CPU 0 by a cgroup, load and writer process
on CPU 1), so drift hits both alike and the ratio of their throughputs is the cost.
Environment variables (KMSGATE_STORE_WRITER=inline, ...) reach the recording node only.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

REPLAY = Path(__file__).with_name("bench_replay.py")
RATE = re.compile(r"([\d.]+) activations/s")


def replay(
    seconds: float, server_cpu: float, extra: list[str], env: dict[str, str]
) -> subprocess.Popen[str]:
    """Start one bench_replay.py run."""
    cmd = [sys.executable, str(REPLAY), "--total", "100000", "--seconds", str(seconds)]
    cmd += ["--server-cpu", str(server_cpu), *extra]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def throughput(output: str) -> float:
    match = RATE.search(output)
    if match is None:
        raise SystemExit(f"bench_replay.py failed:\n{output}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--server-cpu", type=float, default=0.5)
    parser.add_argument("recording", nargs=argparse.REMAINDER, help="bench_replay options")
    args = parser.parse_args()
    recording = [a for a in args.recording if a != "--"] or ["--record", "--clients", "2000"]
    if not 1 <= args.rounds <= 10:
        raise SystemExit("--rounds 1..10")
    plain_env = {k: v for k, v in os.environ.items() if not k.startswith("KMSGATE_")}
    costs = []
    for index in range(args.rounds):
        baseline = replay(args.seconds, args.server_cpu, [], plain_env)  # --no-store
        recorder = replay(args.seconds, args.server_cpu, recording, dict(os.environ))
        base_out, rec_out = baseline.communicate()[0], recorder.communicate()[0]
        base, rec = throughput(base_out), throughput(rec_out)
        costs.append(rec / base - 1)
        print(f"round {index + 1}: no store {base:.0f}/s, recording {rec:.0f}/s: {costs[-1]:+.1%}")
        print("  " + rec_out.strip().splitlines()[-1])
    print(f"throughput with recording: {max(costs):+.1%} to {min(costs):+.1%} "
          f"({' '.join(recording)})")  # fmt: skip


if __name__ == "__main__":
    main()
