"""The startup heap is frozen once a process is ready: full collections skip it, and what
the process allocates afterwards is still collected."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.adversarial.host_attack import Serve
from tests.support.kms import activate_once

ROOT = Path(__file__).resolve().parents[1]


def test_freezing_sets_the_heap_aside_and_later_cycles_are_still_collected() -> None:
    script = textwrap.dedent(
        """
        import gc, weakref
        from kmsgate.heap import freeze_startup_heap

        kept = [[n] for n in range(100_000)]
        class Node:
            pass
        loop = Node(); loop.me = loop; del loop  # garbage from start-up: collected first
        frozen = freeze_startup_heap()
        assert frozen >= 100_000, frozen
        assert len(gc.get_objects()) < 1_000, len(gc.get_objects())
        later = Node(); later.me = later
        freed = []
        weakref.finalize(later, freed.append, True)
        del later
        gc.collect()
        assert freed == [True]
        assert gc.get_freeze_count() == frozen and kept[-1] == [99_999]
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "ok", done.stderr


@pytest.mark.integration
async def test_a_serving_node_freezes_its_startup_heap_and_keeps_answering(
    tmp_path: Path,
) -> None:
    serve = Serve.start(tmp_path / "node", "--log-level", "debug")
    try:
        deadline = time.monotonic() + 20
        frozen: list[dict[str, object]] = []
        while not frozen and time.monotonic() < deadline:
            frozen = [r for r in serve.log_records() if "startup heap frozen" in str(r["msg"])]
            time.sleep(0.05)
        [record] = frozen
        count = int(str(record["msg"]).split(": ")[1].split()[0])
        assert count > 50_000  # the catalogue, the store, the protocol: all set aside
        for _ in range(3):
            assert (await activate_once(serve.port)).ok
    finally:
        serve.stop()
