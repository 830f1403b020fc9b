"""Record writing in a child process, so database work never takes the KMS host's CPU.

At one busy core, SQLite's own work per record (indexes, search triggers, commits) cost the
host 17–35 % of its activations per second even when batched. Here the serving process only
builds a draft (~2 µs); the child runs the usual RecordWriter.

A record is handed over before its answer leaves: the host calls hand_over() after each read
that produced answers, which writes that read's drafts into the pipe as one frame with one
os.write. Bytes in a pipe belong to the kernel, so a SIGKILL of the serving process cannot
lose them: the child reads them, writes them and exits. When the pipe is full, or the child
holds --store-queue records not yet written, the drafts wait here and the host holds their
answers until they are handed over (when_handed_over): a slow store delays answers, it does
not drop records. A dead child is restarted, and the records it had not confirmed go to
its successor: at least once, so a child killed between a commit and its report makes
duplicates of that batch, never a loss.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from kmsgate.recording.drafts import RecordDraft
from kmsgate.recording.frames import FrameError, encode_frame, read_frame
from kmsgate.store.errors import StoreError

log = logging.getLogger("kmsgate.store")
START_TIMEOUT = 30.0
MAX_RESTART_DELAY = 30.0
# The pipe is the kernel-held part of the queue: 1 MiB holds about 7 000 drafts (the
# unprivileged maximum by default, /proc/sys/fs/pipe-max-size); 64 KiB where refused.
PIPE_SIZE = 1 << 20
CLOSE_POLL = 0.01


def _widen_pipe(fd: int, size: int = PIPE_SIZE) -> int:
    """Ask for a `size`-byte pipe buffer; returns the size the kernel granted."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_size is None:  # not Linux
        return 0
    try:
        return fcntl.fcntl(fd, set_size, size)
    except OSError:
        return 0


class WriterProcess:
    """The serving side of the writer process; call everything from the event loop thread."""

    def __init__(
        self,
        url: str,
        *,
        node: str,
        max_queue: int = 10000,
        flush_interval: float = 0.2,
        batch_size: int = 5000,
        restart_delay: float = 1.0,
        close_timeout: float = 5.0,
        run_as: tuple[int, int] | None = None,
        retention_days: int = 0,
    ) -> None:
        """`max_queue` bounds the records the child holds unwritten (the pipe included);
        `close_timeout` bounds the child's last write once its input ends (close, or
        this process killed); `restart_delay` is the first pause before restarting a child;
        `run_as` (uid, gid): the child, started by root, becomes that user before writing;
        `retention_days` > 0: the child prunes older rows (kmsgate.store.retention)."""
        if max_queue < 1 or batch_size < 1:
            raise ValueError("max_queue and batch_size must be positive")
        self._url = url
        self._node = node
        self._max_queue = max_queue
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._restart_delay = self._first_restart_delay = restart_delay
        self._close_timeout = close_timeout
        self._run_as = run_as
        self._retention_days = retention_days
        self._log_level = logging.getLogger("kmsgate").getEffectiveLevel()
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
        self._process: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._closing_event = asyncio.Event()
        self._closing = False
        self._started = False
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
        self.pid: int | None = None  # of the running child, set once the first one is ready
        self.restarts = 0
        self.pipe_size = 0  # bytes the kernel granted the pipe (0 where unknown)
        # (Unix time, message) of the latest failed write or child exit; since when writes
        # fail (None while they succeed): the child's report, for /healthz.
        self.last_error: tuple[float, str] | None = None
        self.failing_since: float | None = None

    # ---------------------------------------------------------------- counters

    @property
    def flush_interval(self) -> float:
        """Seconds a record may wait for others to share its transaction."""
        return self._flush_interval

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

    def set_log_level(self, level: int) -> None:
        """Log what the child does from `level` on (after a reload changed --log-level)."""
        self._log_level = level
        if self._fd is not None and not self._closing:
            self._out += encode_frame(("log_level", level))
            self._pump()

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start the child and wait until it has opened the store; StoreError if it cannot."""
        if self._started:
            return
        self._started = True
        await self._spawn()
        ready = asyncio.ensure_future(self._ready.wait())
        assert self._watcher is not None
        done, _ = await asyncio.wait(
            {ready, self._watcher}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if ready not in done:
            ready.cancel()
            await self._kill()
            raise StoreError("the record writer process did not start (see the log above)")
        log.info("record writer process %s", self.pid)

    async def _spawn(self) -> None:
        read_fd, write_fd = os.pipe()
        self.pipe_size = _widen_pipe(write_fd)
        os.set_blocking(write_fd, False)
        try:
            self._process = process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "kmsgate.recording.child",
                stdin=read_fd,
                stdout=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            os.close(write_fd)
            raise StoreError(f"cannot start the record writer process: {exc}") from exc
        finally:
            os.close(read_fd)  # the child's now; holding it would hide the child's death
        self._fd = write_fd
        config: dict[str, Any] = {
            "url": self._url,  # on the pipe, not the command line: it may hold a password
            "node": self._node,
            "max_queue": self._max_queue,
            "flush_interval": self._flush_interval,
            "batch_size": self._batch_size,
            "close_timeout": self._close_timeout,
            "log_level": self._log_level,
            "run_as": self._run_as,
            "retention_days": self._retention_days,
        }
        self._out += encode_frame(("config", config))
        self._pump()
        self._watcher = asyncio.create_task(self._watch(process), name="kmsgate-writer-watch")

    async def _watch(self, process: asyncio.subprocess.Process) -> None:
        """Follow the child's reports until it exits; restart it if it was not told to."""
        assert process.stdout is not None
        try:
            while (message := await read_frame(process.stdout)) is not None:
                self._on_message(message)
        except FrameError as exc:
            log.error("record writer process sent garbage: %s", exc)
            process.kill()
        code = await process.wait()
        self._ready.clear()
        self._close_pipe()
        self._take_back_unwritten()
        if self._closing or self.pid is None:
            if self.pid is None:
                log.error("record writer process exited with status %s before it was ready", code)
            return  # close() or start() takes it from here
        again = self._resend_unconfirmed()
        self.last_error = (time.time(), f"record writer process exited with status {code}")
        log.error(
            "record writer process %s exited with status %s; restarting in %.1f s, its %d "
            "unconfirmed records go to the next one (a record it wrote but had not yet "
            "confirmed is written twice)",
            self.pid,
            code,
            self._restart_delay,
            again,
        )
        self._retire_child(0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing_event.wait(), self._restart_delay)
        self._restart_delay = min(self._restart_delay * 2, MAX_RESTART_DELAY)
        if not self._closing:
            self.restarts += 1
            await self._spawn()

    def _on_message(self, message: tuple[object, ...]) -> None:
        match message:
            case ("status", int(written), int(dropped), int(failures), trouble):
                self._child_written = written
                self._child_dropped = dropped
                self._child_failures = failures
                self._confirm(written + dropped)
                match trouble:
                    case (float(at), str(text), float() | None as since):
                        self.last_error, self.failing_since = (at, text), since
                    case None:
                        self.failing_since = None
                    case _:
                        raise FrameError(f"malformed status {trouble!r:.80}")
                if self._pending:  # the child made room: hand over what waits for it
                    self._pump()
            case ("log", int(level), str(name), str(text)):
                logging.getLogger(name).log(level, "%s", text)
            case ("ready", int(pid)):
                self.pid = pid
                self._restart_delay = self._first_restart_delay
                self._ready.set()
                self._pump()
            case _:
                raise FrameError(f"unexpected message {message!r:.80}")

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

    async def close(self) -> None:
        """Stop accepting, hand over what waits, let the child write it within
        close_timeout, then stop it."""
        if self._closing:
            return
        self._closing = True
        self._closing_event.set()
        watcher = self._watcher
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._close_timeout
        while (self._pending or self._out) and self._fd is not None and loop.time() < deadline:
            self._pump()
            if self._pending or self._out:
                await asyncio.sleep(CLOSE_POLL)
        self._close_pipe()  # end of input: the child writes, reports and exits
        if watcher is not None:
            try:
                # Beyond the child's own bound: time for it to start up and to exit.
                await asyncio.wait_for(asyncio.shield(watcher), self._close_timeout + 5.0)
            except TimeoutError:
                log.error("record writer process did not finish in time; killing it")
                await self._kill()
        left = len(self._pending) + self._in_flight
        if left:
            log.error("store writer closed with %d records unwritten or unconfirmed", left)
        self._retire_child(self._in_flight)
        self._base_dropped += len(self._pending)
        self._handed += len(self._pending)
        self._pending = []
        self._pump()  # nothing will carry what is left: let anyone waiting for it go

    async def _kill(self) -> None:
        process, watcher = self._process, self._watcher
        self._closing = True
        self._closing_event.set()
        if process is not None and process.returncode is None:
            process.kill()
        if watcher is not None:
            with contextlib.suppress(asyncio.CancelledError, FrameError):
                await watcher

    async def __aenter__(self) -> WriterProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
