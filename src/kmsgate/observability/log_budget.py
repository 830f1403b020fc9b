"""A budget of log lines per second for events a client can cause at will (faults, closes).

A client flooding faulting PDUs would otherwise write a line per PDU: hundreds of thousands a
minute, rotating the genuine activations out of the log files and slowing the host. Lines
over the budget are counted, and the count is said with the next line that is written.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class LogBudget:
    """At most `per_second` lines in each second; the rest counted as suppressed."""

    __slots__ = ("_clock", "_per_second", "_second", "_spent", "suppressed")

    def __init__(self, per_second: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_second = per_second
        self._clock = clock
        self._second = -1
        self._spent = 0
        self.suppressed = 0  # lines not written since the last one that was

    def allow(self) -> bool:
        """Whether a line may be written now (if not, it is counted as suppressed)."""
        second = int(self._clock())
        if second != self._second:
            self._second, self._spent = second, 0
        if self._spent >= self._per_second:
            self.suppressed += 1
            return False
        self._spent += 1
        return True

    def take_suppressed(self) -> int:
        """Lines suppressed since the last call (for the line now being written)."""
        count, self.suppressed = self.suppressed, 0
        return count
