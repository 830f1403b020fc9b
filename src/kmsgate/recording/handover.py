"""The serving side of the hand-over to the record writer child: drafts into a shared ring.

A record is handed over before its answer leaves: submit() appends the draft to a ring in
memory the child maps too (kmsgate.recording.ring), a copy with no system call. That memory
is the child's as much as ours, so a SIGKILL of the serving process loses nothing appended:
the child sees its input end and writes the whole ring. Drafts are handed over only while a
child is attached. When the ring holds --store-queue records not yet committed (or no child
runs), drafts wait here and the host holds their answers until they are handed over
(when_handed_over): a slow store delays answers, it does not drop records. The child
releases ring entries only once committed, so a child that dies leaves its uncommitted
records in the ring for its successor: at least once, never lost.

The pipe to the child carries only control frames: its configuration, log levels, and a
wake-up when the ring fills faster than the child's polling drains it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from collections.abc import Callable

from kmsgate.recording.frames import encode_frame
from kmsgate.recording.ring import RecordRing, RingError
from kmsgate.recording.ring_reader import MAX_KNOWN, KnownEntries
from kmsgate.store.drafts import RecordDraft

log = logging.getLogger("kmsgate.store")
WAKE_FRAME = encode_frame(("wake",))


class RingHandover:
    """Drafts waiting for the ring, the ring itself, and the control pipe to the child; the
    base of WriterProcess, which runs the child at the ring's other end."""

    def __init__(self, max_queue: int) -> None:
        self._max_queue = max_queue
        self._pending: collections.deque[RecordDraft] = collections.deque()
        self._ring: RecordRing | None = None
        self._wake_at = max(1, max_queue // 4)
        self._woken = False  # a wake-up was sent and the child has not reported since
        self._out = bytearray()  # control frames not yet in the pipe
        self._fd: int | None = None  # write end of the current child's stdin pipe
        self._watching_fd = False
        self._pumping = False
        # Drafts submitted, and of those the ones in the ring (or resolved otherwise):
        # a waiter registered at `submitted` = n is released once `handed` >= n.
        self._submitted = 0
        self._handed = 0
        self._waiters: collections.deque[tuple[int, Callable[[], None]]] = collections.deque()
        # A reader (the child, once it has opened the store, or the inline task) takes the
        # ring: drafts are handed over only then. The flag is the event's state, read per
        # draft without a call.
        self._ready = asyncio.Event()
        self._attached = False
        # Drafts kept beside their ring entries for a reader in this process (inline.py),
        # None when the reader is another process.
        self._known: KnownEntries | None = None
        self._closing = False
        self._full = False
        # This child's counters, as last reported, and the totals of the children before it.
        self._child_written = self._child_dropped = self._child_failures = 0
        self._base_written = 0
        self._base_dropped = 0
        self._base_failures = 0

    # ---------------------------------------------------------------- counters

    @property
    def _in_flight(self) -> int:
        """Records in the ring that no child has committed (or dropped) yet."""
        return 0 if self._ring is None else self._ring.uncommitted

    @property
    def depth(self) -> int:
        """Records not yet written: waiting here, or in the ring."""
        return len(self._pending) + self._in_flight

    @property
    def dropped(self) -> int:
        """Records lost: submitted after close, unwritable, or left when the writer closed."""
        return self._base_dropped + self._child_dropped

    @property
    def written(self) -> int:
        """Records the child reported committed."""
        return self._base_written + self._child_written

    @property
    def failures(self) -> int:
        """Failed write attempts in the child (each retry counts)."""
        return self._base_failures + self._child_failures

    # ---------------------------------------------------------------- host side

    def submit(self, draft: RecordDraft) -> bool:
        """Hand a draft over now if the ring has room, else keep it for hand_over(); False
        (and dropped + 1) once closed.

        Never refused for lack of room: the queue's bound holds at hand-over, where the
        host keeps the draft's answer until there is room.
        """
        if self._closing:
            self._base_dropped += 1
            return False
        self._submitted += 1
        if self._pending or not self._attached or not self._append(draft):
            self._pending.append(draft)
        return True

    def hand_over(self) -> bool:
        """Put the drafts submitted so far into the ring; True once all of them are there.

        False: the ring is full or no child is attached; the drafts then wait here, and
        when_handed_over() tells when they are gone.
        """
        if self._handed != self._submitted:
            self._pump()
        return self._handed == self._submitted

    def when_handed_over(self, callback: Callable[[], None]) -> None:
        """Call `callback` (once) when every draft submitted so far is in the ring."""
        if self._handed == self._submitted:
            callback()
            return
        self._waiters.append((self._submitted, callback))

    def _append(self, draft: RecordDraft) -> bool:
        """Put one draft into the ring; False when there is no room (it is not taken)."""
        ring = self._ring
        assert ring is not None
        start = ring.tail
        try:
            waiting = ring.append_draft(draft)
        except (ValueError, RingError):  # not primitives, or larger than any ring holds
            self._base_dropped += 1
            log.error("dropping a record draft that cannot be sent: %.200r", draft)
            self._handed += 1  # resolved: nothing will ever carry it
            return True
        if not waiting:
            self._wake_reader()
            return False
        self._handed += 1
        known = self._known
        if known is not None and len(known) < MAX_KNOWN:
            known.append((ring.appended, start, ring.tail, draft))
        if waiting >= self._wake_at and not self._woken:
            self._wake_reader()
        return True

    def _reader_attached(self) -> None:
        """A reader took the ring: drafts are handed over from now on."""
        self._attached = True
        self._ready.set()

    def _reader_detached(self) -> None:
        """The ring's reader is gone: drafts wait here until the next one."""
        self._attached = False
        self._ready.clear()

    def _pump(self) -> None:
        """Move what waits into the ring as far as its room allows; flush control frames."""
        if self._pumping:
            return  # a waiter's callback submitted more: the running pump takes it along
        self._pumping = True
        try:
            pending = self._pending
            if self._attached:
                while pending and self._append(pending[0]):
                    pending.popleft()
                if pending:
                    self._note_full()
                elif self._full:
                    self._full = False
                    log.warning("store queue has room again; answers no longer wait")
            self._write_control()
        finally:
            self._pumping = False
        waiters, handed = self._waiters, self._handed
        while waiters and waiters[0][0] <= handed:
            try:
                waiters.popleft()[1]()
            # A failing waiter (a bug) must neither keep the others waiting nor stop the
            # reader or watcher that pumps.
            except Exception:
                log.exception("releasing held answers failed")

    def _wake_reader(self) -> None:
        """Tell the ring's reader to read now, not at its next poll."""
        if not self._woken and self._fd is not None:
            self._woken = True
            self._out += WAKE_FRAME
            self._write_control()

    def _send_control(self, message: tuple[object, ...]) -> None:
        self._out += encode_frame(message)
        self._write_control()

    def _write_control(self) -> None:
        fd = self._fd
        if fd is None or not self._out:
            self._unwatch_pipe()
            return
        try:
            written = os.write(fd, self._out)
        except BlockingIOError:
            written = 0
        except OSError:
            return  # the child is gone (EPIPE): its watcher restarts it
        del self._out[:written]
        if self._out:
            self._watch_pipe(fd)
        else:
            self._unwatch_pipe()

    def _note_full(self) -> None:
        if not self._full:
            self._full = True
            log.warning(
                "store queue full (%d records): answers wait until the store catches up",
                self._in_flight,
            )

    def _watch_pipe(self, fd: int) -> None:
        if not self._watching_fd:
            asyncio.get_running_loop().add_writer(fd, self._write_control)
            self._watching_fd = True

    def _unwatch_pipe(self) -> None:
        if self._watching_fd and self._fd is not None:
            asyncio.get_running_loop().remove_writer(self._fd)
        self._watching_fd = False

    def _close_pipe(self) -> None:
        """Close our end of the child's stdin: the child drains the ring, then exits."""
        fd = self._fd
        if fd is None:
            return
        self._unwatch_pipe()
        self._fd = None
        self._out.clear()
        os.close(fd)

    def _retire_child(self, unconfirmed: int) -> None:
        """Fold a finished child's counters into the totals."""
        self._base_written += self._child_written
        self._base_dropped += self._child_dropped + unconfirmed
        self._base_failures += self._child_failures
        self._child_written = self._child_dropped = self._child_failures = 0
