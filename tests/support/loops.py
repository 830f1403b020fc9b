"""A loop stand-in for code that only calls `call_soon`: callbacks run pass by pass."""

from __future__ import annotations

from collections.abc import Callable


class Passes:
    """Runs queued callbacks one pass at a time, as an event loop does."""

    def __init__(self) -> None:
        self.ready: list[Callable[[], object]] = []

    def call_soon(self, callback: Callable[[], object]) -> None:
        self.ready.append(callback)

    def run_pass(self) -> int:
        """Run the callbacks queued before this pass; return how many ran."""
        ready, self.ready = self.ready, []
        for callback in ready:
            callback()
        return len(ready)
