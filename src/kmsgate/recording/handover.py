"""The serving side of the pipe into the record writer child: drafts handed over in frames.

A record is handed over before its answer leaves: the host calls hand_over() after each read
that produced answers, which writes that read's drafts into the pipe as one frame with one
os.write. Bytes in a pipe belong to the kernel, so a SIGKILL of the serving process cannot
lose them. When the pipe is full, or the child holds --store-queue records not yet written,
the drafts wait here and the host holds their answers until they are handed over
(when_handed_over): a slow store delays answers, it does not drop records. Drafts a child
has not confirmed go to its successor: at least once, never lost.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from collections.abc import Callable

from kmsgate.recording.drafts import RecordDraft
from kmsgate.recording.frames import encode_frame

log = logging.getLogger("kmsgate.store")


class DraftPipe:
    """Pending drafts, the frame being written, and what the child confirmed; the base of
    WriterProcess, which runs the child at the pipe's other end."""

    def __init__(self, max_queue: int) -> None:
        self._max_queue = max_queue
        # Drafts flow pending -> out (one frame being written) -> pipe -> child.
        self._pending: list[RecordDraft] = []
        self._out = bytearray()
        self._out_batch: list[RecordDraft] = []
        self._fd: int | None = None  # write end of the current child's stdin pipe
        self._watching_fd = False
        self._pumping = False
        # Drafts submitted, and of those the ones in the pipe (or resolved otherwise):
        # a waiter registered at `submitted` = n is released once `handed` >= n.
        self._submitted = 0
        self._handed = 0
        self._waiters: collections.deque[tuple[int, Callable[[], None]]] = collections.deque()
        self._ready = asyncio.Event()  # the child has opened the store and takes drafts
        self._closing = False
        self._full = False
        # This child's counters, as last reported, and the totals of the children before it.
        self._sent = 0
        # Drafts in this child's pipe or queue, oldest first, not yet reported written or
        # dropped: a successor gets them again if the child dies (at least once, not lost).
        self._unconfirmed: collections.deque[RecordDraft] = collections.deque()
        self._confirmed = 0  # of this child's records, how many left _unconfirmed
        self._child_written = self._child_dropped = self._child_failures = 0
        self._base_written = 0
        self._base_dropped = 0
        self._base_failures = 0

    # ---------------------------------------------------------------- counters

    @property
    def _in_flight(self) -> int:
        return max(0, self._sent - self._child_written - self._child_dropped)

    @property
    def depth(self) -> int:
        """Records not yet written: waiting here, in the pipe, or in the child's queue."""
        return len(self._pending) + self._in_flight

    @property
    def dropped(self) -> int:
        """Records lost: submitted after close, unwritable, or unconfirmed by a child that
        died."""
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
        """Queue a draft for the next hand_over(); False (and dropped + 1) once closed.

        Never refused for lack of room: the queue's bound holds at hand-over, where the
        host keeps the draft's answer until there is room. Call hand_over() after a
        submit: once it is called, what waits leaves as soon as the pipe and child allow.
        """
        if self._closing:
            self._base_dropped += 1
            return False
        self._pending.append(draft)
        self._submitted += 1
        return True

    def hand_over(self) -> bool:
        """Write the drafts submitted so far into the pipe; True once all of them are there.

        False: the pipe is full, the child's queue is, or the child is (re)starting; the
        drafts then wait here, and when_handed_over() tells when they are gone.
        """
        if self._handed != self._submitted:
            self._pump()
        return self._handed == self._submitted

    def when_handed_over(self, callback: Callable[[], None]) -> None:
        """Call `callback` (once) when every draft submitted so far is in the pipe."""
        if self._handed == self._submitted:
            callback()
            return
        self._waiters.append((self._submitted, callback))

    def _pump(self) -> None:
        """Write what waits, frame by frame, as far as the pipe and the child's queue allow."""
        if self._pumping:
            return  # a waiter's callback submitted more: the running pump takes it along
        self._pumping = True
        try:
            self._write_out()
        finally:
            self._pumping = False
        waiters, handed = self._waiters, self._handed
        while waiters and waiters[0][0] <= handed:
            waiters.popleft()[1]()

    def _write_out(self) -> None:
        fd = self._fd
        if fd is None:
            return  # the watcher restarts the child, which then gets what waits here
        while True:
            if self._out:
                try:
                    written = os.write(fd, self._out)
                except BlockingIOError:
                    written = 0
                except OSError:
                    return  # the child is gone (EPIPE): its watcher restarts it and re-sends
                if written < len(self._out):
                    del self._out[:written]
                    self._watch_pipe(fd)
                    return
                self._out.clear()
                self._handed += len(self._out_batch)
                self._unconfirmed.extend(self._out_batch)
                self._out_batch = []
            if not self._pending or not self._ready.is_set():
                break
            room = self._max_queue - self._in_flight
            if room <= 0:
                self._note_full()
                break
            self._frame(room)
        if self._full and not self._pending:
            self._full = False
            log.warning("store queue has room again; answers no longer wait")
        self._unwatch_pipe()

    def _frame(self, room: int) -> None:
        """Move up to `room` pending drafts into one frame in `_out`."""
        if len(self._pending) <= room:
            batch, self._pending = self._pending, []
        else:
            batch, self._pending = self._pending[:room], self._pending[room:]
        try:
            frame = encode_frame(("records", batch))
        except ValueError:
            batch = self._sendable(batch)
            frame = encode_frame(("records", batch))
        self._out += frame
        self._out_batch = batch
        self._sent += len(batch)

    def _sendable(self, batch: list[RecordDraft]) -> list[RecordDraft]:
        """Drop the drafts marshal refuses (a bug upstream), so they cannot block the rest."""
        sendable = []
        for draft in batch:
            try:
                encode_frame(draft)
            except ValueError:
                self._base_dropped += 1
                self._handed += 1  # resolved: nothing will ever carry it
                log.error("dropping a record draft that cannot be sent: %.200r", draft)
            else:
                sendable.append(draft)
        return sendable

    def _note_full(self) -> None:
        if not self._full:
            self._full = True
            log.warning(
                "store queue full (%d records): answers wait until the store catches up",
                self._in_flight,
            )

    def _watch_pipe(self, fd: int) -> None:
        if not self._watching_fd:
            asyncio.get_running_loop().add_writer(fd, self._pump)
            self._watching_fd = True

    def _unwatch_pipe(self) -> None:
        if self._watching_fd and self._fd is not None:
            asyncio.get_running_loop().remove_writer(self._fd)
        self._watching_fd = False

    def _close_pipe(self) -> None:
        """Close our end of the child's stdin: the child reads what is left, then its EOF."""
        fd = self._fd
        if fd is None:
            return
        self._unwatch_pipe()
        self._fd = None
        os.close(fd)

    def _take_back_unwritten(self) -> None:
        """A frame the dead child's pipe got only part of goes whole to the next child."""
        if self._out_batch:
            self._sent -= len(self._out_batch)
            self._pending[:0] = self._out_batch
            self._out_batch = []
        self._out.clear()

    def _confirm(self, resolved: int) -> None:
        """The child resolved its first `resolved` records: they need no successor.

        Its queue is first in, first out, so what it wrote or dropped is the oldest part of
        what it got (a draft it found malformed, a bug upstream, is the one exception).
        """
        settled = min(resolved - self._confirmed, len(self._unconfirmed))
        for _ in range(max(0, settled)):
            self._unconfirmed.popleft()
        self._confirmed = max(self._confirmed, resolved)

    def _resend_unconfirmed(self) -> int:
        """Put the dead child's unconfirmed drafts back in front of what waits; how many."""
        again = list(self._unconfirmed)
        self._unconfirmed.clear()
        self._pending[:0] = again
        self._handed -= len(again)  # in no pipe now: answers after them wait for them again
        return len(again)

    def _retire_child(self, unconfirmed: int) -> None:
        """Fold a finished child's counters into the totals."""
        self._base_written += self._child_written
        self._base_dropped += self._child_dropped + unconfirmed
        self._base_failures += self._child_failures
        self._child_written = self._child_dropped = self._child_failures = 0
        self._sent = self._confirmed = 0
        self._unconfirmed.clear()
