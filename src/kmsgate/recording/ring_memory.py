"""The memory a record ring lives in: anonymous and shared, or a file in the data directory.

A file-backed ring keeps what was handed over when every kmsgate process dies: the pages are
the kernel's, and the next start writes the entries nobody committed. An exclusive lock keeps
a second node off the same file.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
from pathlib import Path

from kmsgate.recording.ring import HEADER_BYTES, RecordRing, RingError, ring_bytes
from kmsgate.store.errors import StoreError

log = logging.getLogger("kmsgate.store")
# Ring bytes per record of --store-queue: a draft takes 220-280 bytes with its header, so the
# count bound is the one that holds, and 10 000 records take 3.75 MiB.
RING_BYTES_PER_RECORD = 384
MIN_RING = 64 << 10


def ring_size(max_entries: int) -> int:
    """Bytes of the shared buffer for a ring bounded at `max_entries` records."""
    capacity = max(MIN_RING, max_entries * RING_BYTES_PER_RECORD)
    return ring_bytes(capacity + mmap.PAGESIZE - 1 & ~(mmap.PAGESIZE - 1))


class RingMemory:
    """A mapped ring and the descriptor a writer child maps it from; close() lets go."""

    def __init__(self, fd: int, memory: mmap.mmap, ring: RecordRing, path: Path | None) -> None:
        self.fd = fd
        self.memory = memory
        self.ring = ring
        self.path = path
        self.size = len(memory)
        self.left_over = ring.uncommitted  # entries a previous run handed over, unwritten

    @classmethod
    def anonymous(cls, max_entries: int) -> RingMemory:
        """A new ring in memory no file names: it lives as long as a process maps it."""
        size = ring_size(max_entries)
        try:
            fd = os.memfd_create("kmsgate-records", os.MFD_CLOEXEC)
        except OSError as exc:
            raise StoreError(f"cannot create memory for the record ring: {exc}") from exc
        try:
            os.ftruncate(fd, size)
            memory = mmap.mmap(fd, size)
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"cannot map memory for the record ring: {exc}") from exc
        return cls(fd, memory, RecordRing.create(memoryview(memory), max_entries), None)

    @classmethod
    def file(cls, path: Path, max_entries: int) -> RingMemory:
        """The ring in `path`: adopted with what it holds, or new; StoreError when another
        process holds it or it cannot be made."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open the record ring {path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"{path} is in use by another kmsgate node ({exc.strerror})") from exc
        try:
            return cls._adopt_or_create(fd, path, max_entries)
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"cannot map the record ring {path}: {exc}") from exc

    @classmethod
    def _adopt_or_create(cls, fd: int, path: Path, max_entries: int) -> RingMemory:
        size = ring_size(max_entries)
        existing = os.fstat(fd).st_size
        if existing > HEADER_BYTES:
            memory = mmap.mmap(fd, existing)
            view = memoryview(memory)
            try:
                ring = RecordRing(view)
            except RingError as exc:
                # Only a crash of the whole machine leaves a ring like that (its pages were
                # written back in part): what it held is not readable.
                log.error("record ring %s is unusable (%s): starting a new one", path, exc)
                view.release()
                memory.close()
            else:
                adopted = cls(fd, memory, ring, path)
                if adopted.left_over:
                    log.warning(
                        "%d records handed over before the last stop were not written: "
                        "writing them now",
                        adopted.left_over,
                    )
                if existing == size and ring.max_entries == max_entries:
                    return adopted
                if adopted.left_over:
                    log.info("the record ring keeps its old size until it starts empty")
                    return adopted
                ring.close()
                view.release()
                memory.close()
        os.ftruncate(fd, 0)  # zeroes every byte, the header first of all
        os.ftruncate(fd, size)
        memory = mmap.mmap(fd, size)
        return cls(fd, memory, RecordRing.create(memoryview(memory), max_entries), path)

    def close(self) -> None:
        """Unmap and close (the file keeps what it holds; its lock goes with the descriptor)."""
        self.ring.close()
        self.memory.close()
        os.close(self.fd)
