"""Reading the record ring into a RecordWriter, and releasing entries once they are written.

Used by the writer child (kmsgate.recording.child) and by the inline writer alike.
"""

from __future__ import annotations

import collections
import logging
import marshal
from typing import TYPE_CHECKING

from kmsgate.recording.ring import RecordRing, RingCursor
from kmsgate.store.drafts import DraftError, RecordDraft, checked_draft

if TYPE_CHECKING:
    from kmsgate.recording.writer import RecordWriter

log = logging.getLogger("kmsgate.store")


# (entry number, its payload, the draft it was made of), oldest first.
KnownEntries = collections.deque[tuple[int, bytes, RecordDraft]]


class RingReader:
    """Moves ring entries into the RecordWriter and releases them once they are resolved."""

    def __init__(
        self, ring: RecordRing, writer: RecordWriter, node: str, known: KnownEntries | None = None
    ) -> None:
        """`known`: entries this process appended, with their drafts (the inline writer's):
        such an entry, read back with the same bytes, is not decoded and checked again."""
        self.ring = ring
        self._writer = writer
        self._node = node
        self._known = known
        head = ring.head()
        self._cursor = RingCursor(head.position, head.count)
        self.taken = 0  # entries read by this reader
        self.malformed = 0  # of those, not drafts (dropped here, resolved at once)
        self._dropped = 0  # of those, dropped by the writer and released from the ring
        # (entries taken, ring position, ring count) after each read, oldest first.
        self._reads: collections.deque[tuple[int, int, int]] = collections.deque()

    def drain(self) -> None:
        """Read what the ring holds, as far as the writer's queue has room."""
        ring, cursor, writer = self.ring, self._cursor, self._writer
        while room := writer.max_queue - writer.depth:
            corrupt = cursor.corrupt
            first = cursor.count + 1  # the number of the first entry this read returns
            payloads = ring.read(cursor, room)
            skipped = cursor.corrupt - corrupt
            if not payloads and not skipped:
                return
            if skipped:
                log.error("dropping %d corrupt record(s) found in the ring", skipped)
                self.malformed += skipped
            for number, payload in enumerate(payloads, first):
                if self._known:
                    known = self._take_known(number, payload)
                    if known is not None:
                        writer.submit(known)
                        continue
                try:
                    draft = marshal.loads(payload)  # noqa: S302 (our own parent, primitives only)
                    writer.submit(checked_draft(draft, self._node))
                except (DraftError, EOFError, ValueError, TypeError) as exc:
                    self.malformed += 1
                    log.error("dropping a malformed record draft: %s", exc)
            self.taken += len(payloads) + skipped
            self._reads.append((self.taken, cursor.position, cursor.count))

    def _take_known(self, number: int, payload: bytes) -> RecordDraft | None:
        """The draft entry `number` was made of, if this process appended it as `payload`."""
        known = self._known
        assert known is not None
        while known and known[0][0] < number:
            known.popleft()  # skipped as corrupt, or taken by a reader before this one
        if known and known[0][0] == number:
            _, appended_payload, draft = known.popleft()
            if appended_payload == payload:
                return draft
        return None

    @property
    def dropped(self) -> int:
        """Records given up: malformed, or dropped by the writer and released from the ring
        (not those keep_dropped left in it)."""
        return self._dropped + self.malformed

    def unread(self) -> bool:
        """Whether the ring holds entries this reader has not taken."""
        return self.ring.unread(self._cursor)

    def release(self, *, keep_dropped: bool = False) -> None:
        """Give the ring back what is committed or dropped: a successor need not rewrite it.

        The writer's queue is first in, first out, so what it wrote or dropped is the oldest
        part of what it got (a malformed draft, a bug upstream, is the one exception).
        keep_dropped=True keeps what the writer dropped since the last release in the ring:
        at close, what it gave up on waits there for the next start.
        """
        writer, reads = self._writer, self._reads
        if not keep_dropped:
            self._dropped = writer.dropped
        resolved = writer.written + self._dropped + self.malformed
        released = None
        while reads and reads[0][0] <= resolved:
            released = reads.popleft()
        if released is not None:
            self.ring.release(RingCursor(released[1], released[2]))
