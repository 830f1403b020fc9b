"""A budget of log lines per second for events a client can cause at will (faults, closes).

A client flooding faulting PDUs would otherwise write a line per PDU: hundreds of thousands a
minute, rotating the genuine activations out of the log files and slowing the host. Lines
over the budget are counted, and the count is said with the next line that is written.
"""

from __future__ import annotations

import logging
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


class RefusalReport:
    """Counts refusals of one kind and logs their number at most once per interval."""

    __slots__ = ("_clock", "_count", "_interval", "_logged_at", "_logger", "_what")

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`what`: the WARNING's text before ': N since the last report'."""
        self._logger, self._what, self._interval, self._clock = logger, what, interval, clock
        self._count = 0
        self._logged_at = -interval

    def note(self) -> None:
        """Count one refusal; a flood makes one WARNING per interval, not one per refusal."""
        self._count += 1
        now = self._clock()
        if now - self._logged_at >= self._interval:
            self._logger.warning("%s: %d since the last report", self._what, self._count)
            self._count, self._logged_at = 0, now
