"""Record writing in a child process, so database work never takes the KMS host's CPU.

At one busy core, SQLite's own work per record (indexes, search triggers, commits) cost the
host 17–35 % of its activations per second even when batched. Here the serving process only
builds a draft (~2 µs) and appends it to a ring in shared memory
(kmsgate.recording.handover); the child reads the ring in batches and runs the usual
RecordWriter. A child that dies is restarted, and the records it had not committed are still
in the ring for its successor: at least once, so a child killed between a commit and its
release of the ring makes duplicates of that batch, never a loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from kmsgate.recording.frames import FrameError, read_frame
from kmsgate.recording.handover import RingHandover
from kmsgate.recording.ring_memory import RingMemory
from kmsgate.store.errors import StoreError

log = logging.getLogger("kmsgate.store")
START_TIMEOUT = 30.0
MAX_RESTART_DELAY = 30.0
CLOSE_POLL = 0.01


class WriterProcess(RingHandover):
    """The serving side of the writer process; call everything from the event loop thread."""

    def __init__(
        self,
        url: str,
        *,
        node: str,
        max_queue: int = 10000,
        flush_interval: float = 0.2,
        batch_size: int = 2000,
        restart_delay: float = 1.0,
        close_timeout: float = 5.0,
        run_as: tuple[int, int] | None = None,
        retention_days: int = 0,
        ring_path: Path | None = None,
    ) -> None:
        """`max_queue` bounds the records the child holds unwritten (the pipe included);
        `close_timeout` bounds the child's last write once its input ends (close, or
        this process killed); `restart_delay` is the first pause before restarting a child;
        `run_as` (uid, gid): the child, started by root, becomes that user before writing;
        `retention_days` > 0: the child prunes older rows (kmsgate.store.retention);
        `ring_path`: the file of the ring of records (kept across crashes), else memory."""
        if max_queue < 1 or batch_size < 1:
            raise ValueError("max_queue and batch_size must be positive")
        super().__init__(max_queue)
        self._url = url
        self._node = node
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._restart_delay = self._first_restart_delay = restart_delay
        self._close_timeout = close_timeout
        self._run_as = run_as
        self._retention_days = retention_days
        self._log_level = logging.getLogger("kmsgate").getEffectiveLevel()
        self._process: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._closing_event = asyncio.Event()
        self._started = False
        self.pid: int | None = None  # of the running child, set once the first one is ready
        self.restarts = 0
        self.ring_size = 0  # bytes of shared memory the ring of records takes
        self._ring_path = ring_path
        self._memory: RingMemory | None = None
        # (Unix time, message) of the latest failed write or child exit; since when writes
        # fail (None while they succeed): the child's report, for /healthz.
        self.last_error: tuple[float, str] | None = None
        self.failing_since: float | None = None

    # ---------------------------------------------------------------- settings

    @property
    def flush_interval(self) -> float:
        """Seconds a record may wait for others to share its transaction."""
        return self._flush_interval

    def set_log_level(self, level: int) -> None:
        """Log what the child does from `level` on (after a reload changed --log-level)."""
        self._log_level = level
        if self._fd is not None and not self._intake.closing:
            self._send_control(("log_level", level))

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start the child and wait until it has opened the store; StoreError if it cannot."""
        if self._started:
            return
        self._started = True
        path = self._ring_path
        memory = self._memory = (
            RingMemory.anonymous(self._max_queue)
            if path is None
            else RingMemory.file(path, self._max_queue)
        )
        self._intake.ring = memory.ring
        self.ring_size = memory.size
        await self._spawn()
        ready = asyncio.ensure_future(self._ready.wait())
        assert self._watcher is not None
        done, _ = await asyncio.wait(
            {ready, self._watcher}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if ready not in done:
            ready.cancel()
            await self._kill()
            self._release_ring()
            raise StoreError("the record writer process did not start (see the log above)")
        log.info("record writer process %s", self.pid)

    async def _spawn(self) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        assert self._memory is not None
        try:
            self._process = process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "kmsgate.recording.child",
                stdin=read_fd,
                stdout=asyncio.subprocess.PIPE,
                pass_fds=(self._memory.fd,),
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
            "ring_fd": self._memory.fd,
            "ring_size": self.ring_size,
        }
        self._send_control(("config", config))
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
        self._reader_detached()
        self._close_pipe()
        if self._intake.closing or self.pid is None:
            if self.pid is None:
                log.error("record writer process exited with status %s before it was ready", code)
            return  # close() or start() takes it from here
        again = self._in_flight
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
        if not self._intake.closing:
            self.restarts += 1
            await self._spawn()

    def _on_message(self, message: tuple[object, ...]) -> None:
        match message:
            case ("status", int(written), int(dropped), int(failures), trouble):
                self._child_written = written
                self._child_dropped = dropped
                self._child_failures = failures
                self._intake.woken = False
                match trouble:
                    case (float(at), str(text), float() | None as since):
                        self.last_error, self.failing_since = (at, text), since
                    case None:
                        self.failing_since = None
                    case _:
                        raise FrameError(f"malformed status {trouble!r:.80}")
                if self._intake.pending:  # the child made room: hand over what waits for it
                    self._pump()
            case ("log", int(level), str(name), str(text)):
                logging.getLogger(name).log(level, "%s", text)
            case ("ready", int(pid)):
                self.pid = pid
                self._restart_delay = self._first_restart_delay
                self._reader_attached()
                self._pump()
            case _:
                raise FrameError(f"unexpected message {message!r:.80}")

    async def close(self) -> None:
        """Stop accepting, hand over what waits, let the child write it within
        close_timeout, then stop it."""
        if self._intake.closing:
            return
        self._intake.closing = True
        self._closing_event.set()
        watcher = self._watcher
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._close_timeout
        while self._intake.pending and self._fd is not None and loop.time() < deadline:
            self._pump()
            if self._intake.pending:
                await asyncio.sleep(CLOSE_POLL)
        self._close_pipe()  # end of input: the child writes, reports and exits
        if watcher is not None:
            try:
                # Beyond the child's own bound: time for it to start up and to exit.
                await asyncio.wait_for(asyncio.shield(watcher), self._close_timeout + 5.0)
            except TimeoutError:
                log.error("record writer process did not finish in time; killing it")
                await self._kill()
        left = len(self._intake.pending) + self._in_flight
        if left:
            log.error("store writer closed with %d records unwritten or unconfirmed", left)
        self._retire_child(self._in_flight)
        self._intake.drop_pending()
        self._pump()  # nothing will carry what is left: let anyone waiting for it go
        self._release_ring()

    def _release_ring(self) -> None:
        if self._memory is not None:
            self._intake.ring = None
            self._memory.close()
            self._memory = None

    async def _kill(self) -> None:
        process, watcher = self._process, self._watcher
        self._intake.closing = True
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
