"""The hand-over's intake against a real ring: every draft submitted is in the ring exactly
once, in order, or waiting, or counted dropped; never two of those, never none."""

from __future__ import annotations

import collections
import marshal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmsgate.recording.intake import DraftIntake
from kmsgate.recording.ring import RecordRing, RingCursor
from kmsgate.recording.ring_memory import RingMemory
from tests.store.test_writer_process import drafts

MAX_ENTRIES = 8
DRAFTS = drafts(100)
# What the ring cannot take: marshal refuses an object, and one too large for any ring.
UNENCODABLE = (object(), "x" * 10**6)


def encodable(draft: Any) -> bool:
    return all(draft is not bad for bad in UNENCODABLE)


class Harness:
    """An intake over a small ring, a reader that takes and releases entries, and the
    test's own record of what was submitted."""

    def __init__(self, memory: RingMemory, max_known: int) -> None:
        self.ring: RecordRing = memory.ring
        self.wakes = 0
        self.intake = DraftIntake(MAX_ENTRIES // 2, self._wake)
        self.intake.ring = self.ring
        self.intake.known = collections.deque()
        self.intake.max_known = max_known
        self.cursor = self.ring.head()
        self.accepted: list[Any] = []  # drafts submit() took, in order
        self.unencodable: list[Any] = []
        self.read: list[Any] = []  # drafts read back from the ring, in order
        self.fresh = iter(DRAFTS)

    def _wake(self) -> None:
        self.intake.woken = True
        self.wakes += 1

    def submit(self, good: bool) -> None:
        draft = next(self.fresh) if good else UNENCODABLE[len(self.unencodable) % 2]
        if self.intake.submit(draft):
            self.accepted.append(draft)
            if not good:
                self.unencodable.append(draft)

    def consume(self, count: int) -> None:
        """The reader: take up to `count` entries (and the drafts kept beside them, as
        ring_reader.py does), release them; it reads again whenever woken."""
        self.read += [marshal.loads(entry) for entry in self.ring.read(self.cursor, count)]
        known = self.intake.known
        while known and known[0][0] <= self.cursor.count:
            known.popleft()
        self.ring.release(self.cursor)
        self.intake.woken = False

    def check(self) -> None:
        intake = self.intake
        handed = intake.handed
        # Drafts leave in the order they came: the first `handed` went into the ring (or were
        # dropped as unencodable), the others wait, none in two places, none lost.
        assert handed + len(intake.pending) == intake.submitted == len(self.accepted)
        assert list(intake.pending) == self.accepted[handed:]
        went_in = [draft for draft in self.accepted[:handed] if encodable(draft)]
        assert self.ring.appended == len(went_in)
        assert self.read + self._unread() == went_in
        assert intake.dropped == len(self.accepted[:handed]) - len(went_in)
        # Drafts kept beside the ring: bounded, each the draft of the entry it names.
        known = list(intake.known or ())
        assert len(known) <= intake.max_known
        for number, start, end, draft in known:
            assert went_in[number - 1] is draft
            assert number > self.cursor.count and 0 <= start < end

    def _unread(self) -> list[Any]:
        cursor = RingCursor(self.cursor.position, self.cursor.count)
        return [marshal.loads(entry) for entry in self.ring.read(cursor, MAX_ENTRIES)]


operations = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.just(0)),
        st.tuples(st.just("submit_bad"), st.just(0)),
        st.tuples(st.just("consume"), st.integers(1, MAX_ENTRIES)),
        st.tuples(st.just("move"), st.just(0)),
        st.tuples(st.just("detach"), st.just(0)),
        st.tuples(st.just("attach"), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(operations, st.integers(0, MAX_ENTRIES * 2))
def test_every_draft_lands_once_in_order_or_waits_or_is_dropped(
    ops: list[tuple[str, Any]], max_known: int
) -> None:
    memory = RingMemory.anonymous(MAX_ENTRIES)
    try:
        harness = Harness(memory, max_known)
        intake = harness.intake
        intake.attached = True
        for op, arg in ops:
            if op == "submit":
                harness.submit(True)
            elif op == "submit_bad":
                harness.submit(False)
            elif op == "consume":
                harness.consume(arg)
            elif op == "move":
                intake.move_pending()
            elif op == "detach":
                intake.attached = False
            else:
                intake.attached = True
            harness.check()
        # Closing: what waits is dropped, and nothing is taken any more.
        intake.closing = True
        waiting = len(intake.pending)
        dropped = intake.dropped
        assert intake.drop_pending() == waiting
        assert intake.dropped == dropped + waiting
        assert intake.handed == intake.submitted
        assert not intake.submit(next(harness.fresh))
        assert intake.dropped == dropped + waiting + 1
    finally:
        memory.close()


def test_a_full_ring_wakes_its_reader_and_keeps_the_draft_waiting() -> None:
    memory = RingMemory.anonymous(MAX_ENTRIES)
    try:
        harness = Harness(memory, MAX_ENTRIES)
        harness.intake.attached = True
        for _ in range(MAX_ENTRIES // 2 - 1):
            harness.submit(True)
        assert harness.wakes == 0
        harness.submit(True)  # a half-full ring: the reader is told at once
        assert harness.wakes == 1
        for _ in range(MAX_ENTRIES):
            harness.submit(True)
        assert harness.wakes == 1  # woken already: not told again until it has read
        assert len(harness.intake.pending) == MAX_ENTRIES // 2
        harness.consume(MAX_ENTRIES)
        assert harness.intake.move_pending()
        assert harness.ring.appended == MAX_ENTRIES + MAX_ENTRIES // 2
        harness.check()
    finally:
        memory.close()


@pytest.mark.parametrize("bad", UNENCODABLE, ids=["not marshallable", "too large"])
def test_a_draft_the_ring_cannot_take_is_dropped_alone(bad: Any) -> None:
    memory = RingMemory.anonymous(MAX_ENTRIES)
    try:
        intake = DraftIntake(MAX_ENTRIES, lambda: None)
        intake.ring, intake.attached = memory.ring, True
        good = DRAFTS[:2]
        assert intake.submit(good[0]) and intake.submit(bad) and intake.submit(good[1])
        assert (intake.submitted, intake.handed, intake.dropped) == (3, 3, 1)
        cursor = memory.ring.head()
        assert [marshal.loads(e) for e in memory.ring.read(cursor, 8)] == good
    finally:
        memory.close()
