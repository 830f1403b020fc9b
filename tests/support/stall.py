"""A record writer kept from writing, so answers must wait for room (records before answers)."""

from __future__ import annotations

import asyncio
import os
import signal

from kmsgate.recording.inline import InlineWriter
from kmsgate.recording.process import WriterProcess


class Stall:
    """Keeps a record writer from writing: a stopped child process, or an inline writer
    whose ring reader is parked. release() lets it go."""

    def __init__(self, writer: object) -> None:
        self._writer = writer
        if isinstance(writer, WriterProcess):
            os.kill(writer.pid or 0, signal.SIGSTOP)
        else:
            assert isinstance(writer, InlineWriter) and writer._task is not None
            writer._task.cancel()

    def release(self) -> None:
        writer = self._writer
        if isinstance(writer, WriterProcess):
            os.kill(writer.pid or 0, signal.SIGCONT)
        else:
            assert isinstance(writer, InlineWriter)
            writer._task = asyncio.get_running_loop().create_task(writer._run())


def stall_writer(writer: object) -> Stall:
    """Stop `writer` from writing until the returned Stall is released."""
    return Stall(writer)
