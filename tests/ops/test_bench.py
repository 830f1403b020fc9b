"""The benches' own claims: bench_hotpath --record counts every record, committed;
bench_ceiling names the machine it ran on."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_hotpath.py"
CEILING = BENCH.with_name("bench_ceiling.py")


@pytest.mark.parametrize("kind", ["kept", "fresh"])
def test_every_request_of_a_recorded_run_is_a_committed_row(kind: str) -> None:
    # 2 600 after the 500 of the warm-up: a full step of the writer (2 000) and a partial one.
    cmd = [sys.executable, str(BENCH), "--log-level", "warning", "--child", kind, "2600"]
    cmd.append("--record")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r"served (\d+), records written (\d+)", done.stdout)
    assert found is not None, done.stdout
    assert (int(found.group(1)), int(found.group(2))) == (3100, 3100)


def test_record_without_instructions_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--record"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert "--record counts instructions" in done.stderr


def test_the_ceiling_bench_names_this_machine() -> None:
    spec = importlib.util.spec_from_file_location("bench_ceiling", CEILING)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    described = bench.machine()
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                 if line.startswith("model name"))  # fmt: skip
    assert described.startswith(f"{model} (family ")
    assert f", {os.cpu_count()} CPUs, guest halt-poll " in described
    # One L1 entry (the data cache; the instruction cache is left out), then L2 and L3.
    assert len(re.findall(r"\bL1 \d+K\b", described)) == 1, described
