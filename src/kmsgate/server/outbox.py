"""Answers written together at the end of an event-loop pass, not one system call at a time.

A host that takes a few tens of microseconds per request leaves its clients asleep between
answers: each answer written at once wakes its client's core again, and on a virtual machine
that wake-up (an inter-processor interrupt) costs the writer 4 µs or more of kernel time. The
answers of one pass over the ready connections leave back to back instead, so a client
woken by the first finds the others already there (docs/benchmarks.md: kept-alive CPU per
answer 38 → 34 µs). An answer waits at most for the other reads of its own pass.

The answers that open a conversation (a bind's, and a connection's first activation) wait
longer: a KMS client opens a connection per activation, so these are most of a busy host's
writes. They wait one pass more, and then as long as each pass brings more answers (their
clients are still sending), so those of the new connections of several passes share their
wake-ups (fresh connections: 64 → 47 µs of CPU each for one pass, 48.6 → 44.3 µs on the
default node for the passes that bring more; docs/benchmarks.md). A pass that brings none, or
a full batch, sends them. Later answers of a kept-alive conversation do not wait: its client
waits on each, and holding them would only stall it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, Protocol

log: Final = logging.getLogger("kmsgate.server")
# Connections whose answers leave together at most: the first of them waits for the other
# requests' work (about 30 µs each), and the clients woken by the first answer share one
# wake-up. 16, not 8: at concurrency 64 fresh connections/s +8 % and p99 8.5 → 8.2 ms; at 8
# no change (docs/benchmarks.md).
BATCH: Final = 16


class QueuedSender(Protocol):
    """A connection that holds queued answer bytes until the outbox tells it to send them."""

    def send_queued(self) -> None:
        """Write the answers queued so far (nothing if they were sent or the client left)."""
        ...


class AnswerOutbox:
    """The connections with answers queued in this pass of the loop; flushed at its end, or
    as soon as `batch` connections wait (a pass over many ready connections would otherwise
    hold the first answers back for all the others' work)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, batch: int = BATCH) -> None:
        # Bound once (compiled code looks a method up, or builds a bound method, at every
        # read): these run once per loop pass.
        self._call_soon = loop.call_soon
        self._flush = self.flush
        self._hold_next = self._hold_or_flush
        self._batch = batch
        self._queued: list[QueuedSender] = []
        self._scheduled = False
        self._holding = False
        self._added = 0  # answers queued so far
        self._held = 0  # of those, the ones queued when the held answers were last looked at
        # Called after each flush (host.py: the loop polls a moment for the clients' next
        # requests, server/busy_poll.py).
        self.on_sent: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._queued)

    def add(self, connection: QueuedSender, *, opening: bool = False) -> None:
        """Have `connection` send its queued answers once the loop's current callbacks ran;
        `opening` answers (a bind's, a first activation's) once a pass brought no more.

        Call it once per batch of queued answers: the connection keeps appending to its own
        bytes until send_queued() runs. Whatever flushes first sends every queued answer."""
        queued = self._queued
        queued.append(connection)
        self._added += 1
        if len(queued) >= self._batch:
            self._send_all()
        elif opening:
            if not self._scheduled and not self._holding:
                self._holding = True
                self._held = self._added
                self._call_soon(self._hold_next)
        elif not self._scheduled:
            # Runs after the reads already under way in this pass: those join the batch.
            self._scheduled = True
            self._call_soon(self._flush)

    def _hold_or_flush(self) -> None:
        # Another pass while the last one brought answers: their clients are busy sending,
        # and the next answers will share the wake-up. A full batch leaves in add() anyway.
        added = self._added
        if added > self._held and not self._scheduled:
            self._held = added
            self._call_soon(self._hold_next)
            return
        self._holding = False
        if not self._scheduled:
            # Scheduled from the callbacks of the next pass: after its reads.
            self._scheduled = True
            self._call_soon(self._flush)

    def flush(self) -> None:
        """Send every queued connection's answers, in the order they were queued."""
        self._scheduled = False
        self._send_all()

    def _send_all(self) -> None:
        queued, self._queued = self._queued, []
        for connection in queued:
            try:
                connection.send_queued()
            # One connection's failure (a bug) must not keep the others' answers back.
            except Exception:
                log.exception("sending queued answers failed")
        if self.on_sent is not None and queued:
            self.on_sent()
