"""The record writer process: reads drafts on stdin, writes them through a RecordWriter.

Started by WriterProcess as `python -m kmsgate.recording.child`. It ignores SIGINT and
SIGTERM (a Ctrl-C or `systemctl stop` reaches the whole group) and ends when its stdin closes,
after writing what it holds — also when the serving process was killed outright.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from kmsgate.recording.drafts import DraftError, RecordDraft, record_from_draft
from kmsgate.recording.frames import FrameError, encode_frame, read_frame
from kmsgate.store.errors import StoreError

if TYPE_CHECKING:
    from kmsgate.recording.writer import RecordWriter

log = logging.getLogger("kmsgate.store")
STATUS_PERIOD = 0.05


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


async def serve(outbox: Outbox) -> None:
    """Configure from the first frame, then write every batch of drafts until end of input."""
    from kmsgate.recording.writer import RecordWriter
    from kmsgate.store.database import Store

    reader = await _stdin_reader()
    config = _config(await read_frame(reader))
    logging.getLogger().setLevel(int(config["log_level"]))
    node = str(config["node"])
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
    writer = RecordWriter(
        store,
        max_queue=int(config["max_queue"]),
        flush_interval=float(config["flush_interval"]),
        batch_size=int(config["batch_size"]),
        retention=retention,
    )
    malformed = 0

    def status() -> tuple[object, ...]:
        # The last field, for /healthz: None, or (time of the latest failure, its message,
        # since when writes fail or None once they succeed again), times in Unix seconds.
        trouble = None
        if writer.last_error is not None:
            trouble = (*writer.last_error, writer.failing_since)
        return ("status", writer.written, writer.dropped + malformed, writer.failures, trouble)

    async def report() -> None:
        last: tuple[object, ...] | None = None
        while True:
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
    try:
        while (message := await read_frame(reader)) is not None:
            match message:
                case ("records", list(drafts)):
                    malformed += submit_all(writer, drafts, node)
                case ("log_level", int(level)):
                    logging.getLogger().setLevel(level)
                case _:
                    raise FrameError(f"unexpected {message[0]!r} frame")
    except FrameError as exc:
        log.error("record writer input broken, writing what arrived: %s", exc)
    finally:
        reporter.cancel()
        await writer.close(timeout=float(config["close_timeout"]))
        with contextlib.suppress(OSError):
            outbox.send(status())
        await store.close()
        log.info(
            "record writer process done: %d records written, %d dropped",
            writer.written,
            writer.dropped + malformed,
        )


def submit_all(writer: RecordWriter, drafts: list[RecordDraft], node: str) -> int:
    """Queue every well-formed draft; returns how many were malformed (and dropped)."""
    malformed = 0
    for draft in drafts:
        try:
            writer.submit(record_from_draft(draft, node))
        except DraftError as exc:
            malformed += 1
            log.error("dropping a malformed record draft: %s", exc)
    return malformed


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
