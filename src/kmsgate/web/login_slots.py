"""Turns for account checks, trusted logins first: a flood queues behind a known user."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator


class LoginSlots:
    """A semaphore with two queues: a free turn goes to a trusted waiter before any other."""

    def __init__(self, turns: int) -> None:
        """turns: how many account checks may run at once."""
        self._free = turns
        self._trusted: deque[asyncio.Future[None]] = deque()
        self._others: deque[asyncio.Future[None]] = deque()

    @property
    def free(self) -> int:
        """Turns no login holds."""
        return self._free

    @property
    def waiting(self) -> int:
        """Logins waiting for a turn (cancelled waiters not yet dropped included)."""
        return len(self._trusted) + len(self._others)

    @contextlib.asynccontextmanager
    async def turn(self, *, trusted: bool) -> AsyncIterator[None]:
        """Wait for a turn (ahead of every untrusted waiter when `trusted`), hold it inside."""
        await self._acquire(trusted)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, trusted: bool) -> None:
        if self._free > 0 and not self.waiting:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        (self._trusted if trusted else self._others).append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # granted as it was cancelled: pass the turn on
            raise

    def _release(self) -> None:
        for queue in (self._trusted, self._others):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self._free += 1
