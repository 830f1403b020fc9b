"""A long-running process's heap: the startup heap set aside from garbage collection, and
one malloc arena for all its threads.

A node holds some 130 000 objects once its catalogue, store and web stack are loaded. Each
full collection walked them all: 60–90 ms with the KMS host stalled, every few seconds
under load. Frozen, they are never walked again; what the process allocates afterwards is
collected as before. (Cycles among the frozen objects are never freed: collect first.)
"""

from __future__ import annotations

import gc
import os

# glibc's mallopt() parameter for the number of arenas (malloc.h).
M_ARENA_MAX = -8


def freeze_startup_heap() -> int:
    """Collect once, then freeze every object alive; return how many are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def share_one_malloc_arena() -> bool:
    """Have every thread allocate from glibc's main arena (call it before threads start);
    False where MALLOC_ARENA_MAX already decides or the C library has no such setting."""
    # glibc gives each thread that allocates an arena of its own and keeps what each arena
    # once held: a node's database connections (a thread each) and libuv's workers kept
    # 1.5-2 MiB more after dashboard use followed by load, and one arena costs no CPU
    # (docs/benchmarks.md). glibc read MALLOC_ARENA_MAX at start: the operator's choice.
    if os.environ.get("MALLOC_ARENA_MAX"):  # set empty, glibc ignores it too
        return False
    import ctypes  # here: only `kmsgate serve` and the writer process need it

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, 1))
