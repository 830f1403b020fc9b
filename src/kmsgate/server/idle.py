"""Idle timeout of one connection: a single timer, re-armed lazily when it fires."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class IdleTimer:
    """Calls `on_idle` once no activity was noted for `timeout` seconds.

    `touch()` only records a time; the timer re-arms itself when it fires early, which is
    far cheaper than cancelling and re-creating a timer for every PDU.
    """

    def __init__(
        self,
        timeout: float,
        on_idle: Callable[[], None],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """`loop`: the running loop, when the caller has it (asking costs a getpid() call)."""
        self._timeout = timeout
        self._on_idle = on_idle
        self._loop = loop or asyncio.get_running_loop()
        self._last = self._loop.time()
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(timeout, self._fire)

    def touch(self) -> None:
        """Note activity now."""
        self._last = self._loop.time()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        remaining = self._last + self._timeout - self._loop.time()
        if remaining > 0:
            self._handle = self._loop.call_later(remaining, self._fire)
            return
        self._handle = None
        self._on_idle()
