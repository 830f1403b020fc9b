"""Reading the record ring into a RecordWriter, and releasing entries once they are written.

Used by the writer child (kmsgate.recording.child) and by the inline writer alike.
"""

from __future__ import annotations

import collections
import logging
import marshal
from typing import TYPE_CHECKING

from kmsgate.recording.intake import KnownEntries
from kmsgate.recording.ring import RecordRing, RingCursor
from kmsgate.store.drafts import DraftError, checked_draft

if TYPE_CHECKING:
    from kmsgate.recording.writer import RecordWriter

log = logging.getLogger("kmsgate.store")


class RingReader:
    """Moves ring entries into the RecordWriter and releases them once they are resolved."""

    def __init__(
        self, ring: RecordRing, writer: RecordWriter, node: str, known: KnownEntries | None = None
    ) -> None:
        """`known`: entries this process appended, with their drafts (the inline writer's):
        such an entry is taken as its draft, its bytes neither read back nor decoded."""
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
        ring, cursor, writer, known = self.ring, self._cursor, self._writer, self._known
        while room := writer.max_queue - writer.depth:
            if known:
                while known and known[0][0] <= cursor.count:
                    known.popleft()  # skipped as corrupt, or taken by a reader before this one
                if known and known[0][0] == cursor.count + 1:
                    self._take_known(room)
                    continue
            stop = None
            if known:
                # Entries this process did not append come first (left by an earlier run):
                # read those, and skip no further than its own when they prove corrupt.
                number, start, _, _ = known[0]
                room = min(room, number - cursor.count - 1)
                stop = (start, number - 1)
            corrupt = cursor.corrupt
            payloads = ring.read(cursor, room, stop)
            skipped = cursor.corrupt - corrupt
            if not payloads and not skipped:
                return
            if skipped:
                log.error("dropping %d corrupt record(s) found in the ring", skipped)
                self.malformed += skipped
            for payload in payloads:
                try:
                    draft = marshal.loads(payload)  # noqa: S302 (our own parent, primitives only)
                    writer.submit(checked_draft(draft, self._node))
                except (DraftError, EOFError, ValueError, TypeError) as exc:
                    self.malformed += 1
                    log.error("dropping a malformed record draft: %s", exc)
            self.taken += len(payloads) + skipped
            self._reads.append((self.taken, cursor.position, cursor.count))

    def _take_known(self, room: int) -> None:
        """Take up to `room` known entries, the next to read, as the drafts they were made of.

        This process wrote their bytes from these very drafts and nothing else writes the
        ring while it holds it (ring_memory.py), so the bytes stay for a later run only.
        """
        known, cursor, writer = self._known, self._cursor, self._writer
        assert known is not None
        number, end = cursor.count, cursor.position
        # Entry numbers only grow, by one per append: the first `run` known entries follow
        # the cursor without a gap exactly when the last of them is numbered `number + run`
        # (a gap: entries appended while MAX_KNOWN were kept, to be read from the ring).
        # The longest such run, by bisection: taken in one hand-over to the writer.
        low, high = 0, min(room, len(known))
        while low < high:
            middle = (low + high + 1) // 2
            if known[middle - 1][0] == number + middle:
                low = middle
            else:
                high = middle - 1
        entries = [known.popleft() for _ in range(low)]
        if entries:
            writer.submit_many([entry[3] for entry in entries])
            number, _, end, _ = entries[-1]
        cursor.count, cursor.position = number, end
        self.taken += len(entries)
        self._reads.append((self.taken, end, number))

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
