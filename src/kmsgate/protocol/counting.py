"""The client count a genuine KMS host reports: distinct machines seen lately, capped at 2 N.

A genuine host remembers the client machine ids (CMIDs) that asked in the last 30 days, one
count per counter (Windows, and each Office version's host key), and reports at most twice
the N-count the requesting product needs. Clients "charge" a new host by sending requests
with fresh CMIDs until the count suffices; they must see it grow by one per new machine.
"""

from __future__ import annotations

import heapq
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from kmsgate.protocol.messages import KmsRequest
from kmsgate.uuids import uuid_from_int

FILETIME_TICKS_PER_SECOND: Final = 10_000_000
COUNT_WINDOW_SECONDS: Final = 30 * 86400
# Counts are capped at 2 N and N at 1000, so more machines per counter change nothing.
MAX_REMEMBERED: Final = 2000
# Renewals re-seen within this long are not written back (the count cannot change).
REWRITE_AFTER_SECONDS: Final = 3600
# Changes waiting for a store that is down: beyond this, new ones are only counted locally.
MAX_PENDING: Final = 50 * MAX_REMEMBERED

CounterOf = Callable[[KmsRequest], str]


@dataclass
class _Counter:
    """One counter's machines: last-seen time per CMID and a lazy min-heap for expiry.

    CMIDs are kept as their 128-bit integers: a UUID's hash and order run interpreted, an
    int's in C (an observe 0.50 → 0.43–0.45 µs with 1 000 machines, 0.94 → 0.77 with 5 000).
    """

    seen: dict[int, int] = field(default_factory=dict)
    heap: list[tuple[int, int]] = field(default_factory=list)

    def put(self, cmid: int, when: int) -> None:
        self.seen[cmid] = when
        heapq.heappush(self.heap, (when, cmid))
        if len(self.heap) > 4 * len(self.seen) + 64:
            # Renewals leave stale heap entries behind; rebuild before they pile up.
            self.heap = [(t, c) for c, t in self.seen.items()]
            heapq.heapify(self.heap)

    def drop_oldest(self, cutoff: int | None) -> None:
        """Forget machines last seen before `cutoff`, or (None) the single oldest machine."""
        while self.heap:
            when, cmid = self.heap[0]
            if cutoff is not None and when >= cutoff:
                return
            heapq.heappop(self.heap)
            if self.seen.get(cmid) == when:
                del self.seen[cmid]
                if cutoff is None:
                    return


class SeenClients:
    """Counts distinct CMIDs per counter over a sliding window; memory is bounded per counter.

    Pure and clock-free: times are FILETIME ticks passed in. `dirty()` hands out what changed
    since the last call so that an edge can share the counts through a store.
    """

    def __init__(
        self,
        counter_of: CounterOf,
        *,
        window_seconds: int = COUNT_WINDOW_SECONDS,
        max_remembered: int = MAX_REMEMBERED,
        shared: bool = False,
    ) -> None:
        self._counter_of = counter_of
        self._window = window_seconds * FILETIME_TICKS_PER_SECOND
        self._rewrite = REWRITE_AFTER_SECONDS * FILETIME_TICKS_PER_SECOND
        self._max = max_remembered
        self._counters: dict[str, _Counter] = {}
        # Only a shared count (one a store keeps) collects changes for `dirty()`.
        self._shared = shared
        self._dirty: dict[tuple[str, int], int] = {}

    def observe(self, request: KmsRequest, now: int) -> int:
        """Count the requesting machine and return the count to report to it."""
        name = self._counter_of(request)
        counter = self._remember(name, request.client_machine_id.int, now, mark=True)
        counter.drop_oldest(now - self._window)
        cap = 2 * request.required_client_count
        return min(len(counter.seen), cap) if cap else len(counter.seen)

    def count(self, name: str, now: int) -> int:
        """Distinct machines in the window for one counter (0 for a counter never used)."""
        counter = self._counters.get(name)
        if counter is None:
            return 0
        counter.drop_oldest(now - self._window)
        return len(counter.seen)

    def counters(self) -> list[str]:
        return sorted(self._counters)

    def merge(self, entries: Iterable[tuple[str, uuid.UUID, int]]) -> None:
        """Add machines another node (or an earlier run) saw; the later time wins."""
        for name, cmid, when in entries:
            self._remember(name, cmid.int, when, mark=False)

    def dirty(self) -> list[tuple[str, uuid.UUID, int]]:
        """Machines first seen, or seen again much later, since the previous call."""
        out = [(name, uuid_from_int(cmid), when) for (name, cmid), when in self._dirty.items()]
        self._dirty.clear()
        return out

    def mark_dirty(self, entries: Iterable[tuple[str, uuid.UUID, int]]) -> None:
        """Hand back changes a store did not take, for the next `dirty()`."""
        for name, cmid, when in entries:
            key = (name, cmid.int)
            if self._dirty.get(key, -1) < when and len(self._dirty) < MAX_PENDING:
                self._dirty[key] = when

    def _remember(self, name: str, cmid: int, when: int, *, mark: bool) -> _Counter:
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = _Counter()
        previous = counter.seen.get(cmid)
        if previous is not None and previous >= when:
            return counter
        counter.put(cmid, when)
        if (
            mark
            and self._shared
            and (previous is None or when - previous >= self._rewrite)
            and (len(self._dirty) < MAX_PENDING or (name, cmid) in self._dirty)
        ):
            self._dirty[(name, cmid)] = when
        if len(counter.seen) > self._max:
            counter.drop_oldest(None)
        return counter
