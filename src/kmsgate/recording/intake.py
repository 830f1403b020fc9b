"""Where every answer's record draft enters the hand-over: into the ring, or queued for room.

Compiled with mypyc (native_modules.txt): submit() runs once per KMS request answered, and
as the interpreted part of RingHandover it cost the serving core ~0.3 µs a draft beyond the
ring's own append (docs/benchmarks.md). The rest of the hand-over (the control pipe, the
waiters, the writers' life cycles) stays in handover.py, which owns one of these.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any, Final

from kmsgate.recording.ring import RecordRing, RingError

log: Final = logging.getLogger("kmsgate.store")

# (entry number, its ring position, the position just past it, the draft it was made of),
# oldest first.
KnownEntries = collections.deque[tuple[int, int, int, Any]]
# Drafts kept beside their ring entries until the reader takes them: one is then taken as it
# is, its entry neither read back nor decoded and checked (about 2 µs a record). Beyond this
# many (a store that lags), entries are decoded from the ring as a child's are: memory stays
# bounded.
MAX_KNOWN: Final = 4096


class DraftIntake:
    """The ring drafts go into, the drafts waiting for its room, and their counts: a draft
    submitted as `submitted` = n is in the ring (or resolved otherwise) once `handed` >= n."""

    def __init__(self, wake_at: int, wake: Callable[[], None]) -> None:
        """`wake`: tells the ring's reader to read now; called once `wake_at` entries wait
        (or the ring is full) and `woken` is not yet set, which it is to set."""
        self.ring: RecordRing | None = None
        self.pending: collections.deque[Any] = collections.deque()
        # Drafts kept beside their entries for a reader in this process (inline.py), None
        # when the reader is another process.
        self.known: KnownEntries | None = None
        self.max_known = MAX_KNOWN  # the bound of `known`
        self.attached = False  # a reader takes the ring: drafts go into it
        self.closing = False  # no draft is taken any more
        self.woken = False  # the reader was woken and has not read since
        self.submitted = 0
        self.handed = 0
        self.dropped = 0  # submitted after closing, or not encodable
        self.wake_at = wake_at  # entries waiting in the ring that wake its reader
        self._wake = wake

    def submit(self, draft: Any) -> bool:
        """Hand a draft over now if the ring has room, else keep it in `pending`; False
        (and dropped + 1) once closing.

        Never refused for lack of room: the queue's bound holds at hand-over, where the
        host keeps the draft's answer until there is room.
        """
        if self.closing:
            self.dropped += 1
            return False
        self.submitted += 1
        if self.pending or not self.attached or not self.append(draft):
            self.pending.append(draft)
        return True

    def append(self, draft: Any) -> bool:
        """Put one draft into the ring; False when there is no room (it is not taken)."""
        ring = self.ring
        assert ring is not None
        start = ring.tail
        try:
            waiting = ring.append_draft(draft)
        except (ValueError, RingError):  # not primitives, or larger than any ring holds
            self.dropped += 1
            log.error("dropping a record draft that cannot be sent: %.200r", draft)
            self.handed += 1  # resolved: nothing will ever carry it
            return True
        if not waiting:
            if not self.woken:
                self._wake()
            return False
        self.handed += 1
        known = self.known
        if known is not None and len(known) < self.max_known:
            known.append((ring.appended, start, ring.tail, draft))
        if waiting >= self.wake_at and not self.woken:
            self._wake()
        return True

    def move_pending(self) -> bool:
        """Move waiting drafts into the ring as far as its room allows (once a reader is
        attached); True when none is left waiting."""
        pending = self.pending
        if self.attached:
            while pending and self.append(pending[0]):
                pending.popleft()
        return not pending

    def drop_pending(self) -> int:
        """Give up the drafts still waiting (nothing will carry them): each counts as
        dropped and as resolved; return how many."""
        count = len(self.pending)
        self.dropped += count
        self.handed += count
        self.pending.clear()
        return count
