"""RingReader with the entries this process appended known: taken back as their drafts,
without reading the ring, and exactly the ring's records whatever was left over or corrupt."""

from __future__ import annotations

import collections
import marshal
import mmap
from typing import cast

import pytest

from kmsgate.recording.intake import KnownEntries
from kmsgate.recording.ring import ENTRY_HEADER, RecordRing, ring_bytes
from kmsgate.recording.ring_reader import RingReader
from kmsgate.recording.writer import RecordWriter
from kmsgate.store.drafts import RecordDraft
from tests.store.test_writer_process import drafts


class Taker:
    """The RecordWriter side a RingReader needs: room, a queue, counters."""

    def __init__(self) -> None:
        self.max_queue = 1000
        self.taken: list[RecordDraft] = []
        self.written = 0
        self.dropped = 0

    @property
    def depth(self) -> int:
        return len(self.taken) - self.written

    def submit(self, draft: RecordDraft) -> bool:
        self.taken.append(draft)
        return True

    def submit_many(self, drafts: list[RecordDraft]) -> int:
        self.taken.extend(drafts)
        return len(drafts)


def make(known: KnownEntries | None) -> tuple[RecordRing, RingReader, Taker]:
    memory = mmap.mmap(-1, ring_bytes(1 << 16))
    ring = RecordRing.create(memoryview(memory), 1000)
    taker = Taker()
    return ring, RingReader(ring, cast(RecordWriter, taker), "n", known), taker


def append(ring: RecordRing, known: KnownEntries | None, draft: RecordDraft) -> None:
    """What RingHandover._append does for a reader in this process (the inline writer)."""
    start = ring.tail
    assert ring.append(marshal.dumps(draft))
    if known is not None:
        known.append((ring.appended, start, ring.tail, draft))


def spoil(ring: RecordRing, index: int) -> None:
    """Flip a byte of entry `index` (from 0): its checksum no longer matches."""
    offset = 0
    for _ in range(index):
        size, _crc = ENTRY_HEADER.unpack_from(ring._data, offset)
        offset += -(-(ENTRY_HEADER.size + size) // 8) * 8
    ring._data[offset + ENTRY_HEADER.size] ^= 0xFF


def test_known_entries_are_the_appended_drafts_themselves() -> None:
    known: KnownEntries = collections.deque()
    ring, reader, taker = make(known)
    made = drafts(30)
    for draft in made:
        append(ring, known, draft)
    spoil(ring, 1)  # the ring's copy is for a later run; this run has the draft itself
    reader.drain()
    assert taker.taken == made
    # The very objects: nothing was decoded (a decoded draft would be an equal copy).
    assert all(took is draft for took, draft in zip(taker.taken, made, strict=True))
    assert reader.malformed == 0
    assert not reader.unread()
    assert not known


def test_entries_left_by_an_earlier_run_are_decoded_then_known_ones_are_not() -> None:
    known: KnownEntries = collections.deque()
    ring, reader, taker = make(known)
    left, fresh = drafts(5), drafts(5, start=2_000_000_000_000_000)
    for draft in left:
        append(ring, None, draft)  # appended by a process gone since: unknown here
    for draft in fresh:
        append(ring, known, draft)
    reader.drain()
    assert taker.taken == left + fresh
    assert not any(took is draft for took, draft in zip(taker.taken[:5], left, strict=True))
    assert all(took is draft for took, draft in zip(taker.taken[5:], fresh, strict=True))


def test_a_corrupt_entry_of_an_earlier_run_costs_no_entry_of_this_one() -> None:
    known: KnownEntries = collections.deque()
    ring, reader, taker = make(known)
    made = drafts(5)
    for draft in made[:3]:
        append(ring, None, draft)  # left by a run that crashed
    for draft in made[3:]:
        append(ring, known, draft)
    spoil(ring, 1)
    reader.drain()
    reader.drain()
    # The reader skips from the corrupt entry to this run's first, not to the tail: the
    # second and third are lost with the crash, the answers of this run are not.
    assert taker.taken == [made[0], made[3], made[4]]
    assert taker.taken[1] is made[3] and taker.taken[2] is made[4]
    assert reader.malformed == 2
    assert not known
    assert not reader.unread()


@pytest.mark.parametrize("room", [1, 3, 7, 1000])
def test_known_runs_with_gaps_are_taken_in_order_whatever_the_room(room: int) -> None:
    """Entries appended while the known deque was full (MAX_KNOWN) leave gaps in it: the
    reader takes each known run whole, reads each gap from the ring, and never skips."""
    known: KnownEntries = collections.deque()
    ring, reader, taker = make(known)
    taker.max_queue = room
    made = drafts(20)
    unknown = {3, 4, 11, 19}  # not kept beside the ring: decoded from it
    for index, draft in enumerate(made):
        append(ring, None if index in unknown else known, draft)
    while reader.unread():
        reader.drain()
        taker.written = len(taker.taken)  # the writer committed all it holds: room again
    assert taker.taken == made
    assert all(
        (took is draft) is (index not in unknown)
        for index, (took, draft) in enumerate(zip(taker.taken, made, strict=True))
    )
    assert reader.taken == len(made) and reader.malformed == 0
    assert not known
