"""A single-producer, single-consumer ring of byte entries in memory both processes map.

The serving process appends one entry per record draft; the record writer child reads them
and releases them once committed. Appending is a memory copy, no system call and no wake-up
of the child: memory the child maps stays the child's when the serving process is killed, so
an appended entry is as safe as bytes in a pipe, at a fraction of the cost.

Layout: a 4 KiB header, then `capacity` bytes of entries. Header words (8 bytes, native
order): magic, capacity, max_entries; at word 8 the producer's tail (byte position, entry
count); at word 16 the consumer's head (position and count released). Positions only grow;
an entry sits at `position % capacity`. Each side writes only its own pair, each word with one
aligned store (memoryview 'Q'), and both pairs only grow: a reader that sees a stale word
sees less data or less room, never garbage. An entry is a 4-byte length, a 4-byte CRC-32 of
the payload, the payload, padded to 8 bytes; a length of WRAP sends the reader to the start.
"""

from __future__ import annotations

import marshal
import mmap
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from kmsgate._native import optional_extension
from kmsgate.errors import KmsgateError

HEADER_BYTES: Final = 4096
MAGIC: Final = int.from_bytes(b"KMSRING1", "little")
ENTRY_HEADER: Final = struct.Struct("<II")


# _ring.c, unless missing or KMSGATE_PURE_PYTHON_RING=1.
_C_RING: Final = optional_extension("kmsgate.recording._ring", "RING")[0]
_c_append: Final[Callable[[memoryview, int, int, bytes], int] | None] = getattr(
    _C_RING, "append", None
)
_c_append_draft: Final[Callable[[memoryview, int, int, Any, int], int] | None] = getattr(
    _C_RING, "append_draft", None
)
# Record drafts travel in marshal's format 2: without the table of shared references that
# formats 3 and 4 build per call, which a draft's primitives never need (18 % less a draft).
DRAFT_FORMAT: Final = 2
_dumps: Final = marshal.dumps
# Bound once: a compiled module looks a module's or an object's attribute up at each use.
_pack_entry_header: Final = ENTRY_HEADER.pack_into
_crc32: Final = zlib.crc32
_ENTRY_HEADER_SIZE: Final = ENTRY_HEADER.size
WRAP: Final = 0xFFFFFFFF
ALIGN: Final = 8
# Words of the header (indices into a memoryview cast to 'Q').
_MAGIC: Final = 0
_CAPACITY: Final = 1
_MAX_ENTRIES: Final = 2
_TAIL_POS: Final = 8
_TAIL_COUNT: Final = 9
_HEAD_POS: Final = 16
_HEAD_COUNT: Final = 17


class RingError(KmsgateError, ValueError):
    """A buffer that does not hold a ring, or an entry that can never fit in one."""


def ring_bytes(capacity: int) -> int:
    """Size of the shared buffer for `capacity` bytes of entries."""
    return HEADER_BYTES + capacity


def _aligned(size: int) -> int:
    return (size + ALIGN - 1) & ~(ALIGN - 1)


def _checked_capacity(words: memoryview, size: int) -> int:
    """The ring's capacity once its header proves consistent; RingError otherwise."""
    if words[_MAGIC] != MAGIC:
        raise RingError("the buffer holds no record ring")
    capacity: int = words[_CAPACITY]
    if capacity % ALIGN or HEADER_BYTES + capacity > size:
        raise RingError(f"ring capacity {capacity} does not fit its {size}-byte buffer")
    head, tail = words[_HEAD_POS], words[_TAIL_POS]
    head_count, tail_count = words[_HEAD_COUNT], words[_TAIL_COUNT]
    if not (0 <= tail - head <= capacity and 0 <= tail_count - head_count <= tail - head):
        raise RingError(f"inconsistent ring positions: head {head}, tail {tail}")
    return capacity


@dataclass(slots=True)
class RingCursor:
    """Where a consumer stands: the byte position and entry count it has read up to."""

    position: int
    count: int
    corrupt: int = 0  # entries skipped because their bytes never matched their checksum
    suspect: int = -1  # position of an entry whose checksum did not match at the last read


class RecordRing:
    """One side's view of the ring; the producer and the consumer each hold their own."""

    def __init__(self, buffer: memoryview, *, accelerated: bool = True) -> None:
        """Attach to an initialised ring (see create); RingError when it is not one.
        `accelerated`: append through _ring.c when built (over an mmap: page-aligned)."""
        if len(buffer) < HEADER_BYTES + ALIGN:
            raise RingError(f"a ring needs more than {HEADER_BYTES} bytes, got {len(buffer)}")
        words = buffer[:HEADER_BYTES].cast("Q")
        try:
            capacity = _checked_capacity(words, len(buffer))
        except RingError:
            words.release()  # else the mmap under it could never be closed
            raise
        self._words = words
        self.capacity = capacity
        self.max_entries = words[_MAX_ENTRIES]
        self.max_payload = capacity // 4 - ENTRY_HEADER.size
        self._data = buffer[HEADER_BYTES : HEADER_BYTES + capacity]
        accelerated = accelerated and isinstance(buffer.obj, mmap.mmap)
        self._c_append = _c_append if accelerated else None
        self._c_append_draft = _c_append_draft if accelerated else None
        # The C append's own view of the header and entries (released by close()).
        self._whole = buffer[: HEADER_BYTES + capacity] if self._c_append is not None else None
        # The producer is the only writer of the tail: it keeps its own copy.
        self._tail = self._words[_TAIL_POS]
        self._count = self._words[_TAIL_COUNT]

    @classmethod
    def create(cls, buffer: memoryview, max_entries: int) -> RecordRing:
        """Initialise an empty ring over all of `buffer` (zeroed, page-sized) and attach."""
        capacity = (len(buffer) - HEADER_BYTES) // ALIGN * ALIGN
        if capacity < 64 * ALIGN or max_entries < 1:
            raise RingError("a ring needs room for some entries and max_entries >= 1")
        words = buffer[:HEADER_BYTES].cast("Q")
        words[_CAPACITY] = capacity
        words[_MAX_ENTRIES] = max_entries
        for index in (_TAIL_POS, _TAIL_COUNT, _HEAD_POS, _HEAD_COUNT):
            words[index] = 0
        words[_MAGIC] = MAGIC
        words.release()
        return cls(buffer)

    # ---------------------------------------------------------------- both sides

    @property
    def uncommitted(self) -> int:
        """Entries appended and not yet released by a consumer."""
        return self._words[_TAIL_COUNT] - self._words[_HEAD_COUNT]

    @property
    def used_bytes(self) -> int:
        """Bytes of entries appended and not yet released."""
        return self._words[_TAIL_POS] - self._words[_HEAD_POS]

    # ---------------------------------------------------------------- producer

    @property
    def tail(self) -> int:
        """The position just past the latest entry appended (the producer's own copy)."""
        return self._tail

    @property
    def appended(self) -> int:
        """Entries appended to the ring ever: the number of the latest one (the first is 1)."""
        return self._count

    def append_draft(self, draft: Any) -> int:
        """append(marshal.dumps(draft, DRAFT_FORMAT)), encoded straight into the ring when
        _ring.c can; marshal's ValueError for a value it cannot encode."""
        encode = self._c_append_draft
        if encode is not None and self._whole is not None:
            tail = encode(self._whole, self._tail, self._count, draft, self.max_payload)
            if tail == 0:
                return 0
            if tail > 0:
                self._tail = tail
                self._count += 1
                appended: int = self._count - self._words[_HEAD_COUNT]
                return appended
        return self.append(_dumps(draft, DRAFT_FORMAT))

    def append(self, payload: bytes) -> int:
        """Add one entry; return the entries now appended and not yet released (its own
        included), or 0 (nothing written) when the ring has no room for it now.

        RingError when the payload could never fit, so that it cannot block the ring.
        """
        size = len(payload)
        if not 0 < size <= self.max_payload:
            raise RingError(f"an entry of {size} bytes: the ring takes 1 to {self.max_payload}")
        words, capacity, tail = self._words, self.capacity, self._tail
        if self._c_append is not None and self._whole is not None:
            tail = self._c_append(self._whole, tail, self._count, payload)
            if not tail:
                return 0
            self._tail = tail
            self._count += 1
            appended: int = self._count - words[_HEAD_COUNT]
            return appended
        waiting: int = self._count - words[_HEAD_COUNT]
        if waiting >= self.max_entries:
            return 0
        need = _aligned(ENTRY_HEADER.size + size)
        offset = tail % capacity
        skip = capacity - offset if offset + need > capacity else 0
        if tail + skip + need - words[_HEAD_POS] > capacity:
            return 0
        data = self._data
        if skip:
            _pack_entry_header(data, offset, WRAP, 0)
            offset = 0
        _pack_entry_header(data, offset, size, _crc32(payload))
        start = offset + _ENTRY_HEADER_SIZE
        data[start : start + size] = payload
        # Count before position: a consumer only follows the position, and a reader of the
        # count alone sees it no later than the entry.
        self._tail = tail = tail + skip + need
        self._count += 1
        words[_TAIL_COUNT] = self._count
        words[_TAIL_POS] = tail
        return waiting + 1

    # ---------------------------------------------------------------- consumer

    def head(self) -> RingCursor:
        """Where the last consumer's released part ends: a new consumer starts there."""
        return RingCursor(self._words[_HEAD_POS], self._words[_HEAD_COUNT])

    def read(
        self, cursor: RingCursor, limit: int, stop: tuple[int, int] | None = None
    ) -> list[bytes]:
        """Up to `limit` entries after `cursor`, which moves past them.

        An entry whose checksum does not match its bytes (a store not visible yet on a
        weakly ordered machine) ends this read; if it still does not match at the next read,
        it is corrupt (only a crash of the machine leaves one), and so is a length no entry
        can have (0, too long, past the end): everything from it up to the tail is skipped
        and counted in `cursor.corrupt`, since no entry after it can be found for sure.
        """
        entries: list[bytes] = []
        tail = self._words[_TAIL_POS]
        data, capacity = self._data, self.capacity
        position = cursor.position
        while position < tail and len(entries) < limit:
            offset = position % capacity
            size, crc = ENTRY_HEADER.unpack_from(data, offset)
            if size == WRAP:
                position += capacity - offset
                continue
            start = offset + ENTRY_HEADER.size
            if not 0 < size <= self.max_payload or start + size > capacity:
                self._skip_to_tail(cursor, len(entries), stop)
                return entries
            payload = bytes(data[start : start + size])
            if zlib.crc32(payload) == crc:
                entries.append(payload)
            elif cursor.suspect == position:
                # Its length may be torn as well: stepping over it could land inside the
                # next entry and lose count. Nothing after it can be trusted.
                self._skip_to_tail(cursor, len(entries), stop)
                return entries
            else:
                cursor.suspect = position
                break
            position += _aligned(ENTRY_HEADER.size + size)
        cursor.count += len(entries)
        cursor.position = position
        return entries

    def _skip_to_tail(
        self, cursor: RingCursor, taken: int, stop: tuple[int, int] | None = None
    ) -> None:
        """Move `cursor` (which has `taken` entries of this read to count yet) to the tail,
        or to `stop` (the position and count of a later entry known good), counting what it
        passes as corrupt."""
        words = self._words
        # Count before position (the producer stores them in that order): the count read may
        # lag the position by the entry being appended, never lead it, so released counts
        # never pass what was appended.
        count = words[_TAIL_COUNT]
        tail = words[_TAIL_POS]
        if stop is not None and cursor.position <= stop[0] <= tail:
            tail, count = stop
        cursor.corrupt += max(0, count - cursor.count - taken)
        cursor.position, cursor.count, cursor.suspect = tail, max(count, cursor.count + taken), -1

    def unread(self, cursor: RingCursor) -> bool:
        """Whether entries follow `cursor`."""
        return cursor.position < self._words[_TAIL_POS]

    def release(self, cursor: RingCursor) -> None:
        """Give back everything up to `cursor`: the producer may reuse that room."""
        words = self._words
        if cursor.count > words[_HEAD_COUNT]:
            words[_HEAD_POS] = cursor.position
            words[_HEAD_COUNT] = cursor.count

    def close(self) -> None:
        """Let go of the buffer (an mmap cannot close while views of it live)."""
        self._words.release()
        self._data.release()
        if self._whole is not None:
            self._whole.release()
