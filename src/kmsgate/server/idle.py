"""A connection's idle timeout and lifetime: one timer for both, re-armed lazily when it fires."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable


class IdleTimer:
    """Calls `on_idle` once no activity was noted for `timeout` seconds, or `on_lifetime`
    once the connection is `lifetime` seconds old (0: no limit), whichever comes first.

    `touch()` only records a time; the timer re-arms itself when it fires early, which is
    far cheaper than cancelling and re-creating a timer for every PDU. One timer serves both
    limits: a timer costs its connection about half a microsecond to set and cancel.
    """

    def __init__(
        self,
        timeout: float,
        on_idle: Callable[[], None],
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        lifetime: float = 0.0,
        on_lifetime: Callable[[], None] | None = None,
    ) -> None:
        """`loop`: the running loop, when the caller has it (asking costs a getpid() call)."""
        self._timeout = timeout
        self._on_idle = on_idle
        self._on_lifetime = on_lifetime
        self._loop = loop or asyncio.get_running_loop()
        now = self._last = self._loop.time()
        self._end = now + lifetime if lifetime and on_lifetime is not None else math.inf
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(
            min(now + timeout, self._end), self._fire
        )

    def touch(self) -> None:
        """Note activity now."""
        self._last = self._loop.time()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        now = self._loop.time()
        if now >= self._end and self._on_lifetime is not None:
            self._handle = None
            self._on_lifetime()
            return
        idle_at = self._last + self._timeout
        if idle_at > now:
            self._handle = self._loop.call_at(min(idle_at, self._end), self._fire)
            return
        self._handle = None
        self._on_idle()
