"""bench/bench_hotpath.py --record: the instruction counts include every record, committed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_hotpath.py"


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
