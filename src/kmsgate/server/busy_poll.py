"""Polling a moment for the next request after answers leave, before the core may sleep.

A host core that halts when its loop waits takes long to wake on a virtual machine (the
guest's halt-polling is often off): at concurrency 8 the default node's core sat idle about
10 % of a kept-alive run while its clients waited on that wake-up (docs/benchmarks.md). So
after answers leave, the loop keeps passing over its sockets without sleeping for as long as
requests or connections keep coming within `budget`; a budget without them ends it, and an
idle host never polls. Compiled with mypyc: a pass runs once per loop iteration while polling.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class BusyPoll:
    """Keeps `loop` from sleeping while `activity()` (a count of requests and connections)
    moved within the last `budget` seconds, starting at each kick()."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        budget: float,
        activity: Callable[[], int],
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._call_soon = loop.call_soon
        # Bound once: compiled code builds a new bound method at every `self._pass` read,
        # and a saturated host schedules one per loop pass (a cycle kept as long as the host).
        self._next_pass = self._pass
        self.budget = budget
        self._activity = activity
        self._clock = clock
        self.polling = False
        self._seen = 0
        # The budget's end; None while the last pass saw activity (its time not yet read).
        self._deadline: float | None = 0.0

    def kick(self) -> None:
        """Answers just left: poll for what they bring, unless already polling."""
        if self.polling or self.budget <= 0:
            return
        self.polling = True
        self._seen = self._activity()
        self._deadline = self._clock() + self.budget
        self._call_soon(self._next_pass)

    def _pass(self) -> None:
        # A callback ready for the next pass makes the loop poll its sockets without a
        # timeout instead of sleeping in them. A saturated host sees activity in nearly
        # every pass: the clock is read only in the quiet ones (the budget then counts from
        # the first quiet pass, at most one pass later than from the last activity).
        seen = self._activity()
        if seen != self._seen:
            self._seen = seen
            self._deadline = None
            self._call_soon(self._next_pass)
            return
        now = self._clock()
        deadline = self._deadline
        if deadline is None:
            deadline = self._deadline = now + self.budget
        if now < deadline:
            self._call_soon(self._next_pass)
        else:
            self.polling = False
