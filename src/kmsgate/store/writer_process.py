"""Record writing in a child process, so database work never takes the KMS host's CPU.

At one busy core, SQLite's own work per record (indexes, search triggers, commits) cost the
host 17–35 % of its activations per second even when batched. Here the serving process only
builds a draft (~2 µs) and sends drafts in batches over a pipe; the child runs the usual
RecordWriter. Same contract as RecordWriter: submit() never blocks, the queue is bounded,
drops are counted; a dead child is restarted and its unconfirmed records counted as dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from typing import Any

from kmsgate.store.drafts import RecordDraft
from kmsgate.store.errors import StoreError
from kmsgate.store.frames import FrameError, encode_frame, read_frame

log = logging.getLogger("kmsgate.store")
# How long drafts gather before one write to the pipe: far below any flush interval.
SEND_DELAY = 0.01
START_TIMEOUT = 30.0
MAX_RESTART_DELAY = 30.0


class WriterProcess:
    """The serving side of the writer process; submit() is called from the event loop thread."""

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
        """`close_timeout` bounds the child's last write once its input ends (close, or
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
        self._pending: list[RecordDraft] = []
        self._send_handle: asyncio.TimerHandle | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._closing_event = asyncio.Event()
        self._closing = False
        self._started = False
        self._full = False
        self._dropped_at_full = 0
        # This child's counters, as last reported, and the totals of the children before it.
        self._sent = 0
        self._child_written = self._child_dropped = self._child_failures = 0
        self._base_written = 0
        self._base_dropped = 0
        self._base_failures = 0
        self.pid: int | None = None  # of the running child, set once the first one is ready
        self.restarts = 0
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
        """Records lost: queue full, submitted after close, unwritable, or unconfirmed by a
        child that died."""
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
        """Queue a draft; False (and dropped + 1) when the queue is full or closed."""
        depth = len(self._pending) + self._in_flight
        if depth >= self._max_queue or self._closing:
            if not self._full and not self._closing:
                self._full = True
                self._dropped_at_full = self.dropped
                log.warning("store queue full (%d records): dropping new activation records", depth)
            self._base_dropped += 1
            return False
        # Said once the queue is half empty, not at every batch the child confirms.
        if self._full and depth <= self._max_queue // 2:
            self._full = False
            log.warning(
                "store queue has room again; %d records were dropped",
                self.dropped - self._dropped_at_full,
            )
        self._pending.append(draft)
        if self._send_handle is None and self._ready.is_set():
            self._send_handle = asyncio.get_running_loop().call_later(SEND_DELAY, self._send)
        return True

    def _send(self) -> None:
        self._send_handle = None
        process = self._process
        if not self._pending or process is None or process.stdin is None:
            return
        if process.stdin.is_closing() or not self._ready.is_set():
            return  # the watcher restarts the child, which then gets what waits here
        try:
            frame = encode_frame(("records", self._pending))
        except ValueError:
            frame = self._encode_sendable()
        process.stdin.write(frame)
        self._sent += len(self._pending)
        self._pending = []

    def _encode_sendable(self) -> bytes:
        """Drop the drafts marshal refuses (a bug upstream), so they cannot block the rest."""
        sendable = []
        for draft in self._pending:
            try:
                encode_frame(draft)
            except ValueError:
                self._base_dropped += 1
                log.error("dropping a record draft that cannot be sent: %.200r", draft)
            else:
                sendable.append(draft)
        self._pending = sendable
        return encode_frame(("records", sendable))

    def set_log_level(self, level: int) -> None:
        """Log what the child does from `level` on (after a reload changed --log-level)."""
        self._log_level = level
        process = self._process
        if process is not None and process.stdin is not None and not process.stdin.is_closing():
            process.stdin.write(encode_frame(("log_level", level)))

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
        try:
            self._process = process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "kmsgate.store.writer_child",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise StoreError(f"cannot start the record writer process: {exc}") from exc
        assert process.stdin is not None
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
        process.stdin.write(encode_frame(("config", config)))
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
        if self._closing or self.pid is None:
            if self.pid is None:
                log.error("record writer process exited with status %s before it was ready", code)
            return  # close() or start() takes it from here
        lost = self._in_flight
        self.last_error = (time.time(), f"record writer process exited with status {code}")
        log.error(
            "record writer process %s exited with status %s; %d records unconfirmed, "
            "restarting in %.1f s",
            self.pid,
            code,
            lost,
            self._restart_delay,
        )
        self._retire_child(lost)
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
                match trouble:
                    case (float(at), str(text), float() | None as since):
                        self.last_error, self.failing_since = (at, text), since
                    case None:
                        self.failing_since = None
                    case _:
                        raise FrameError(f"malformed status {trouble!r:.80}")
            case ("log", int(level), str(name), str(text)):
                logging.getLogger(name).log(level, "%s", text)
            case ("ready", int(pid)):
                self.pid = pid
                self._restart_delay = self._first_restart_delay
                self._ready.set()
                if self._pending:
                    self._send()
            case _:
                raise FrameError(f"unexpected message {message!r:.80}")

    def _retire_child(self, unconfirmed: int) -> None:
        """Fold a finished child's counters into the totals."""
        self._base_written += self._child_written
        self._base_dropped += self._child_dropped + unconfirmed
        self._base_failures += self._child_failures
        self._child_written = self._child_dropped = self._child_failures = 0
        self._sent = 0

    async def close(self) -> None:
        """Stop accepting, let the child write what it holds within close_timeout, then stop it."""
        if self._closing:
            return
        self._closing = True
        self._closing_event.set()
        if self._send_handle is not None:
            self._send_handle.cancel()
        self._send()
        process, watcher = self._process, self._watcher
        if process is not None and process.stdin is not None:
            process.stdin.close()  # end of input: the child writes, reports and exits
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
        self._pending = []

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
