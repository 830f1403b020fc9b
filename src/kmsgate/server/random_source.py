"""The host's random bytes: the kernel's, fetched a page at a time rather than per answer.

Each v5/v6 answer takes 32 random bytes; one getrandom() call per 16 of them cost more than
the bytes themselves (a system call, and the GIL released and taken again).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

CHUNK: Final = 4096

# Bumped in a forked child: a buffer filled under another count came from the parent.
_forks = 0


class BufferedRandom:
    """A RandomBytes that hands out consecutive, never repeated, slices of `read(CHUNK)`.

    For one thread, the event loop's (where every answer is built): it takes no lock.
    """

    def __init__(self, read: Callable[[int], bytes] = os.urandom, chunk: int = CHUNK) -> None:
        self._read = read
        self._chunk = chunk
        self._buffer = b""
        self._at = 0
        self._forks = _forks

    def __call__(self, size: int) -> bytes:
        at = self._at
        end = at + size
        if end > len(self._buffer) or self._forks != _forks:
            if size > self._chunk:
                return self._read(size)
            self._buffer = self._read(self._chunk)
            self._forks = _forks
            at, end = 0, size
        self._at = end
        return self._buffer[at:end]

    def discard(self) -> None:
        """Forget the bytes not yet handed out (a forked child must not repeat its parent's)."""
        self._buffer = b""
        self._at = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_count_fork)
