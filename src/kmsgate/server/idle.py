"""A connection's idle timeout and lifetime: one deadline for both, re-armed lazily when it
fires, in a loop timer shared with the connections whose deadlines fall close to it."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Final

# Deadlines this close share one loop timer: a connection may close up to this much late.
SLOT_SECONDS: Final = 0.05


class TimerSlots:
    """Loop timers each shared by the IdleTimers whose deadlines fall in one slot of time.

    Setting and cancelling a timer of the loop per connection cost about as much as the
    rest of accepting it; joining and leaving a set costs a tenth of that. A slot fires at
    its end, so no deadline in it is met early.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, width: float = SLOT_SECONDS) -> None:
        self.loop = loop
        self._width = width
        self._slots: dict[int, set[IdleTimer]] = {}

    def add(self, timer: IdleTimer, when: float) -> int:
        """Fire `timer` at `when` or a little later; the slot to leave when cancelled."""
        index = math.ceil(when / self._width)
        members = self._slots.get(index)
        if members is None:
            members = self._slots[index] = set()
            self.loop.call_at(index * self._width, self._fire, index)
        members.add(timer)
        return index

    def remove(self, timer: IdleTimer, index: int) -> None:
        members = self._slots.get(index)
        if members is not None:
            members.discard(timer)

    def _fire(self, index: int) -> None:
        for timer in self._slots.pop(index, ()):
            timer.fire()


class IdleTimer:
    """Calls `on_idle` once no activity was noted for `timeout` seconds, or `on_lifetime`
    once the connection is `lifetime` seconds old (0: no limit), whichever comes first.

    `touch()` only records a time; the timer re-arms itself when it fires early, which is
    far cheaper than re-arming it for every PDU. `slots`: the timers shared with other
    connections (the host's); without, this timer has slots of its own.
    """

    def __init__(
        self,
        timeout: float,
        on_idle: Callable[[], None],
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        lifetime: float = 0.0,
        on_lifetime: Callable[[], None] | None = None,
        slots: TimerSlots | None = None,
    ) -> None:
        """`loop`: the running loop, when the caller has it (asking costs a getpid() call)."""
        self._timeout = timeout
        self._on_idle = on_idle
        self._on_lifetime = on_lifetime
        self._loop = loop or asyncio.get_running_loop()
        self._slots = slots or TimerSlots(self._loop)
        now = self._last = self._loop.time()
        self._end = now + lifetime if lifetime and on_lifetime is not None else math.inf
        self._slot = self._slots.add(self, min(now + timeout, self._end))
        self._armed = True

    @property
    def timeout(self) -> float:
        """The idle timeout this timer enforces (as read when it started)."""
        return self._timeout

    def touch(self) -> None:
        """Note activity now."""
        self._last = self._loop.time()

    def cancel(self) -> None:
        if self._armed:
            self._armed = False
            self._slots.remove(self, self._slot)

    def fire(self) -> None:
        """The deadline set last has come (called by the slots)."""
        if not self._armed:  # cancelled while its slot was firing
            return
        now = self._loop.time()
        if now >= self._end and self._on_lifetime is not None:
            self._armed = False
            self._on_lifetime()
            return
        idle_at = self._last + self._timeout
        if idle_at > now:
            self._slot = self._slots.add(self, min(idle_at, self._end))
            return
        self._armed = False
        self._on_idle()
