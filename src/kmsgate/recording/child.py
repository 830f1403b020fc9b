"""The record writer process: reads drafts from the shared ring, writes them through a
RecordWriter.

Started by WriterProcess as `python -m kmsgate.recording.child`, with the ring's memory as an
inherited descriptor and control frames on stdin. It reads the ring every half
--store-flush-interval, or sooner when woken, and releases entries once they are committed.
It ignores SIGINT and SIGTERM (a Ctrl-C or `systemctl stop` reaches the whole group) and ends
when its stdin closes, after writing the whole ring — also when the serving process was killed
outright.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import signal
import sys
import threading
from typing import Any

from kmsgate.heap import freeze_startup_heap, share_one_malloc_arena
from kmsgate.recording.frames import FrameError, encode_frame, read_frame
from kmsgate.recording.ring import RecordRing, RingError
from kmsgate.recording.ring_reader import RingReader
from kmsgate.store.errors import StoreError

log = logging.getLogger("kmsgate.store")
STATUS_PERIOD = 0.05
MIN_POLL = 0.01


class Outbox:
    """Frames to the parent on stdout; writes are whole frames even from several threads."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def send(self, message: tuple[object, ...]) -> None:
        data = encode_frame(message)
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]


class ForwardingHandler(logging.Handler):
    """Hands log records to the parent, which logs them in its own format and files."""

    def __init__(self, outbox: Outbox) -> None:
        super().__init__()
        self._outbox = outbox

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self._outbox.send(("log", record.levelno, record.name, text))
        except (OSError, ValueError, TypeError):
            self.handleError(record)


def _attach_ring(config: dict[str, Any]) -> tuple[mmap.mmap, RecordRing]:
    fd = int(config["ring_fd"])
    try:
        memory = mmap.mmap(fd, int(config["ring_size"]))
    finally:
        os.close(fd)  # the mapping keeps the memory
    try:
        return memory, RecordRing(memoryview(memory))
    except RingError as exc:
        raise FrameError(f"the record ring is unusable: {exc}") from exc


def _config(message: tuple[object, ...] | None) -> dict[str, Any]:
    if message is None or message[0] != "config" or len(message) != 2:
        raise FrameError("the first frame must be the writer's configuration")
    config = message[1]
    if not isinstance(config, dict):
        raise FrameError("the configuration frame must hold a mapping")
    return config


async def _stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _follow_control(reader: asyncio.StreamReader, wake: asyncio.Event) -> None:
    """Act on control frames until the serving process closes the pipe (or dies)."""
    try:
        while (message := await read_frame(reader)) is not None:
            match message:
                case ("wake",):
                    wake.set()
                case ("log_level", int(level)):
                    logging.getLogger().setLevel(level)
                case _:
                    raise FrameError(f"unexpected {message[0]!r} frame")
    except FrameError as exc:
        log.error("record writer input broken, writing what the ring holds: %s", exc)
    finally:
        wake.set()


async def serve(outbox: Outbox) -> None:
    """Configure from the first frame, then write what the ring brings until end of input."""
    from kmsgate.recording.writer import RecordWriter
    from kmsgate.store.database import Store

    reader = await _stdin_reader()
    config = _config(await read_frame(reader))
    logging.getLogger().setLevel(int(config["log_level"]))
    node = str(config["node"])
    memory, ring = _attach_ring(config)
    # Its file, if missing (deleted since the serving process opened it), it creates anew.
    store = await Store.open(str(config["url"]), upgrade=False, recreate=True)
    if config.get("run_as") is not None:
        from kmsgate.systemd import drop_privileges

        # Started by root, as the serving process could not exec the interpreter once it
        # is the service user; becomes that user too, after importing the database driver
        # (which may live where that user cannot read) but before connecting.
        uid, gid = config["run_as"]
        drop_privileges(int(uid), int(gid))
    retention = None
    if int(config.get("retention_days", 0)) > 0:
        from kmsgate.store.retention import Retention

        retention = Retention(store, int(config["retention_days"]))
    flush_interval = float(config["flush_interval"])
    batch_size = int(config["batch_size"])
    wake = asyncio.Event()  # read the ring now
    committed = asyncio.Event()  # report (and release) now

    def on_written() -> None:
        # Released and reported at once: a full ring holds the parent's answers till then.
        committed.set()
        wake.set()

    writer = RecordWriter(
        store,
        on_written=on_written,
        # The ring keeps the rest safe: as objects, only about what one transaction takes.
        max_queue=min(int(config["max_queue"]), batch_size),
        flush_interval=flush_interval,
        batch_size=batch_size,
        retention=retention,
    )
    reading = RingReader(ring, writer, node)

    def status() -> tuple[object, ...]:
        # The last field, for /healthz: None, or (time of the latest failure, its message,
        # since when writes fail or None once they succeed again), times in Unix seconds.
        trouble = None
        if writer.last_error is not None:
            trouble = (*writer.last_error, writer.failing_since)
        # Dropped: what the ring let go of; what it keeps is the parent's to count.
        return ("status", writer.written, reading.dropped, writer.failures, trouble)

    async def report() -> None:
        last: tuple[object, ...] | None = None
        while True:
            reading.release()  # before the report: the parent reads the room it announces
            current = status()
            if current != last:
                try:
                    outbox.send(current)
                except OSError:  # the parent is gone: keep writing, stop reporting
                    return
                last = current
            committed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STATUS_PERIOD):  # not wait_for: see below
                    await committed.wait()

    await writer.start()
    freeze_startup_heap()  # the store and its engine are loaded: full collections skip them
    outbox.send(("ready", os.getpid()))
    reporter = asyncio.create_task(report())
    control = asyncio.create_task(_follow_control(reader, wake))
    poll = max(MIN_POLL, flush_interval / 2)
    try:
        while True:
            reading.drain()  # no await inside: a wake-up cannot slip in before clear()
            if control.done():
                break
            wake.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel that
            # arrives as the event is set.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll):
                    await wake.wait()
        # Input ended: the writer takes a batch's worth at a time, the rest as it commits.
        deadline = asyncio.get_running_loop().time() + float(config["close_timeout"])
        while reading.unread() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(MIN_POLL)
            reading.drain()
    finally:
        reporter.cancel()
        reading.release()
        await writer.close(timeout=float(config["close_timeout"]))
        reading.release(keep_dropped=True)  # a ring file keeps them for the next start
        with contextlib.suppress(OSError):
            outbox.send(status())
        await store.close()
        ring.close()
        memory.close()
        log.info(
            "record writer process done: %d records written, %d dropped",
            writer.written,
            reading.dropped,
        )


def main() -> int:
    """Entry point of the writer process."""
    share_one_malloc_arena()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    outbox = Outbox(sys.stdout.fileno())
    root = logging.getLogger()
    root.handlers[:] = [ForwardingHandler(outbox)]
    try:
        asyncio.run(serve(outbox))
    except FrameError as exc:
        log.error("record writer process: %s", exc)
        return 2
    except (OSError, KeyError, ValueError, StoreError) as exc:
        log.error("record writer process failed: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
