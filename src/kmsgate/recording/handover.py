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
from kmsgate.recording.intake import DraftIntake
from kmsgate.store.drafts import RecordDraft

log = logging.getLogger("kmsgate.store")
WAKE_FRAME = encode_frame(("wake",))


class RingHandover:
    """The ring and the drafts waiting for it (its DraftIntake, whose submit is this gate's),
    the answers waiting for their drafts, and the control pipe to the child; the base of
    WriterProcess and InlineWriter, which run the ring's reader."""

    def __init__(self, max_queue: int) -> None:
        self._max_queue = max_queue
        # The ring, the drafts waiting for it and their counts (compiled: every draft passes).
        self._intake = DraftIntake(max(1, max_queue // 4), self._wake_reader)
        # The intake's submit itself, not a method calling it: the host calls it per request.
        self.submit: Callable[[RecordDraft], bool] = self._intake.submit
        self._out = bytearray()  # control frames not yet in the pipe
        self._fd: int | None = None  # write end of the current child's stdin pipe
        self._watching_fd = False
        self._pumping = False
        # A waiter registered at intake.submitted = n is released once intake.handed >= n.
        self._waiters: collections.deque[tuple[int, Callable[[], None]]] = collections.deque()
        # A reader (the child, once it has opened the store, or the inline task) takes the
        # ring: drafts are handed over only then.
        self._ready = asyncio.Event()
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
        ring = self._intake.ring
        return 0 if ring is None else ring.uncommitted

    @property
    def depth(self) -> int:
        """Records not yet written: waiting here, or in the ring."""
        return len(self._intake.pending) + self._in_flight

    @property
    def dropped(self) -> int:
        """Records lost: submitted after close, unwritable, or left when the writer closed."""
        return self._base_dropped + self._child_dropped + self._intake.dropped

    @property
    def written(self) -> int:
        """Records the child reported committed."""
        return self._base_written + self._child_written

    @property
    def failures(self) -> int:
        """Failed write attempts in the child (each retry counts)."""
        return self._base_failures + self._child_failures

    # ---------------------------------------------------------------- host side

    def hand_over(self) -> bool:
        """Put the drafts submitted so far into the ring; True once all of them are there.

        False: the ring is full or no child is attached; the drafts then wait here, and
        when_handed_over() tells when they are gone.
        """
        intake = self._intake
        if intake.handed != intake.submitted:
            self._pump()
        return intake.handed == intake.submitted

    def when_handed_over(self, callback: Callable[[], None]) -> None:
        """Call `callback` (once) when every draft submitted so far is in the ring."""
        intake = self._intake
        if intake.handed == intake.submitted:
            callback()
            return
        self._waiters.append((intake.submitted, callback))

    def _reader_attached(self) -> None:
        """A reader took the ring: drafts are handed over from now on."""
        self._intake.attached = True
        self._ready.set()

    def _reader_detached(self) -> None:
        """The ring's reader is gone: drafts wait here until the next one."""
        self._intake.attached = False
        self._ready.clear()

    def _pump(self) -> None:
        """Move what waits into the ring as far as its room allows; flush control frames."""
        if self._pumping:
            return  # a waiter's callback submitted more: the running pump takes it along
        self._pumping = True
        intake = self._intake
        try:
            if intake.attached:
                if not intake.move_pending():
                    self._note_full()
                elif self._full:
                    self._full = False
                    log.warning("store queue has room again; answers no longer wait")
            self._write_control()
        finally:
            self._pumping = False
        waiters, handed = self._waiters, intake.handed
        while waiters and waiters[0][0] <= handed:
            try:
                waiters.popleft()[1]()
            # A failing waiter (a bug) must neither keep the others waiting nor stop the
            # reader or watcher that pumps.
            except Exception:
                log.exception("releasing held answers failed")

    def _wake_reader(self) -> None:
        """Tell the ring's reader to read now, not at its next poll."""
        if not self._intake.woken and self._fd is not None:
            self._intake.woken = True
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
