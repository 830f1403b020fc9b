"""The startup heap is frozen once a process is ready: full collections skip it, and what
the process allocates afterwards is still collected. A serving process's threads share one
malloc arena."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.adversarial.host_attack import Serve, children
from tests.support.kms import activate_once

ROOT = Path(__file__).resolve().parents[1]
# glibc reserves each thread arena as 64 MiB of address space aligned on its size: the part in
# use readable and writable, the rest inaccessible (HEAP_MAX_SIZE in malloc/arena.c).
ARENA_RESERVE = 64 << 20


def thread_arenas(pid: int) -> int:
    """How many thread arenas a process's memory map shows."""
    maps = [line.split() for line in Path(f"/proc/{pid}/maps").read_text().splitlines()]
    found = 0
    for mapping, following in itertools.pairwise(maps):
        start, end = (int(part, 16) for part in mapping[0].split("-"))
        after, limit = (int(part, 16) for part in following[0].split("-"))
        anonymous = len(mapping) == 5 and len(following) == 5
        if (
            anonymous
            and mapping[1] == "rw-p"
            and following[1] == "---p"
            and start % ARENA_RESERVE == 0
            and after == end
            and limit - start == ARENA_RESERVE
        ):
            found += 1
    return found


ARENA_SCRIPT = textwrap.dedent(
    """
    import os, sys, threading
    sys.path.insert(0, {tests!r})
    from kmsgate.heap import share_one_malloc_arena
    from test_heap import thread_arenas

    shared = share_one_malloc_arena() if sys.argv[1] == "share" else None
    def allocate():
        # Beyond pymalloc's small objects and below mmap's threshold: glibc's malloc.
        kept = [bytearray(4096) for _ in range(2000)]
        assert len(kept) == 2000
    threads = [threading.Thread(target=allocate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(shared, thread_arenas(os.getpid()))
    """
).format(tests=str(ROOT / "tests"))


def _arenas_after_threads(mode: str, **env: str) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", ARENA_SCRIPT, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env,
    )
    assert done.returncode == 0, done.stderr
    shared, arenas = done.stdout.split()
    return shared, int(arenas)


def test_threads_share_the_main_arena_once_asked_and_not_otherwise() -> None:
    assert _arenas_after_threads("share") == ("True", 0)
    assert _arenas_after_threads("share", MALLOC_ARENA_MAX="") == ("True", 0)
    # The control: the same threads without it get arenas of their own, which the map shows.
    assert _arenas_after_threads("leave")[1] >= 1


def test_an_operators_malloc_arena_max_is_left_in_charge() -> None:
    shared, arenas = _arenas_after_threads("share", MALLOC_ARENA_MAX="4")
    assert shared == "False" and arenas >= 1


@pytest.mark.integration
@pytest.mark.parametrize("writer", ["inline", "process"])
async def test_a_serving_node_and_its_threads_allocate_from_one_arena(
    tmp_path: Path, writer: str
) -> None:
    serve = Serve.start(tmp_path / "node", "--store-writer", writer, web=True)
    try:
        for _ in range(20):  # the store's connection thread writes them
            assert (await activate_once(serve.port)).ok
        deadline = time.monotonic() + 20
        while serve.rows("SELECT COUNT(*) FROM activations")[0][0] != 20:
            assert time.monotonic() < deadline, "the activations were not written"
            time.sleep(0.05)
        # The writer process, when there is one, writes them from threads of its own.
        processes = [serve.pid, *children(serve.pid)]
        assert len(processes) == (2 if writer == "process" else 1)
        for pid in processes:
            assert len(list(Path(f"/proc/{pid}/task").iterdir())) > 1
            assert thread_arenas(pid) == 0, pid
    finally:
        serve.stop()


@pytest.mark.integration
async def test_a_node_without_a_store_leaves_the_arenas_and_ctypes_alone(tmp_path: Path) -> None:
    # No store, no connection threads: the one arena would gain nothing and ctypes cost memory.
    serve = Serve.start(tmp_path / "node", "--no-store")
    try:
        assert (await activate_once(serve.port)).ok
        maps = Path(f"/proc/{serve.pid}/maps").read_text()
        assert "_ctypes" not in maps
    finally:
        serve.stop()


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
