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
import collections
import contextlib
import logging
import marshal
import mmap
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from kmsgate.recording.drafts import DraftError, record_from_draft
from kmsgate.recording.frames import FrameError, encode_frame, read_frame
from kmsgate.recording.ring import RecordRing, RingCursor, RingError
from kmsgate.store.errors import StoreError

if TYPE_CHECKING:
    from kmsgate.recording.writer import RecordWriter

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


class RingReader:
    """Moves ring entries into the RecordWriter and releases them once they are resolved."""

    def __init__(self, ring: RecordRing, writer: RecordWriter, node: str) -> None:
        self._ring = ring
        self._writer = writer
        self._node = node
        head = ring.head()
        self._cursor = RingCursor(head.position, head.count)
        self.taken = 0  # entries read by this child
        self.malformed = 0  # of those, not drafts (dropped here, resolved at once)
        # (entries taken, ring position, ring count) after each read, oldest first.
        self._reads: collections.deque[tuple[int, int, int]] = collections.deque()

    def drain(self) -> None:
        """Read what the ring holds, as far as the writer's queue has room."""
        ring, cursor, writer = self._ring, self._cursor, self._writer
        while room := writer.max_queue - writer.depth:
            corrupt = cursor.corrupt
            payloads = ring.read(cursor, room)
            skipped = cursor.corrupt - corrupt
            if not payloads and not skipped:
                return
            if skipped:
                log.error("dropping %d corrupt record(s) found in the ring", skipped)
                self.malformed += skipped
            for payload in payloads:
                try:
                    draft = marshal.loads(payload)  # noqa: S302 (our own parent, primitives only)
                    writer.submit(record_from_draft(draft, self._node))
                except (DraftError, EOFError, ValueError, TypeError) as exc:
                    self.malformed += 1
                    log.error("dropping a malformed record draft: %s", exc)
            self.taken += len(payloads) + skipped
            self._reads.append((self.taken, cursor.position, cursor.count))

    def unread(self) -> bool:
        """Whether the ring holds entries this reader has not taken."""
        return self._ring.unread(self._cursor)

    def release(self) -> None:
        """Give the ring back what is committed or dropped: a successor need not rewrite it.

        The writer's queue is first in, first out, so what it wrote or dropped is the oldest
        part of what it got (a malformed draft, a bug upstream, is the one exception).
        """
        writer, reads = self._writer, self._reads
        resolved = writer.written + writer.dropped + self.malformed
        released = None
        while reads and reads[0][0] <= resolved:
            released = reads.popleft()
        if released is not None:
            self._ring.release(RingCursor(released[1], released[2]))


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
    writer = RecordWriter(
        store,
        max_queue=int(config["max_queue"]),
        flush_interval=flush_interval,
        batch_size=int(config["batch_size"]),
        retention=retention,
    )
    reading = RingReader(ring, writer, node)

    def status() -> tuple[object, ...]:
        # The last field, for /healthz: None, or (time of the latest failure, its message,
        # since when writes fail or None once they succeed again), times in Unix seconds.
        trouble = None
        if writer.last_error is not None:
            trouble = (*writer.last_error, writer.failing_since)
        return ("status", writer.written, writer.dropped + reading.malformed, writer.failures,
                trouble)  # fmt: skip

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
            await asyncio.sleep(STATUS_PERIOD)

    await writer.start()
    outbox.send(("ready", os.getpid()))
    reporter = asyncio.create_task(report())
    wake = asyncio.Event()
    control = asyncio.create_task(_follow_control(reader, wake))
    poll = max(MIN_POLL, flush_interval / 2)
    try:
        while True:
            reading.drain()  # no await inside: a wake-up cannot slip in before clear()
            if control.done():
                break
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), poll)
        # Input ended. The writer's queue is as long as the ring, so the last drain took all
        # of it unless the ring held more than that bound; what is left follows as it writes.
        deadline = asyncio.get_running_loop().time() + float(config["close_timeout"])
        while reading.unread() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(MIN_POLL)
            reading.drain()
    finally:
        reporter.cancel()
        await writer.close(timeout=float(config["close_timeout"]))
        reading.release()
        with contextlib.suppress(OSError):
            outbox.send(status())
        await store.close()
        ring.close()
        memory.close()
        log.info(
            "record writer process done: %d records written, %d dropped",
            writer.written,
            writer.dropped + reading.malformed,
        )


def main() -> int:
    """Entry point of the writer process."""
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
