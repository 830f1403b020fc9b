"""Length-prefixed frames between the serving process and its record writer process.

marshal, not pickle: messages are tuples of primitives, both ends run the same interpreter,
and unmarshalling cannot run code. Every message is a tuple whose first item names it.
"""

from __future__ import annotations

import asyncio
import marshal
import struct
from typing import Any

from kmsgate.store.errors import StoreError

HEADER = struct.Struct("<I")
# 5 000 drafts of ~130 bytes are under 1 MiB; anything far larger is a broken stream.
MAX_FRAME = 64 << 20


class FrameError(StoreError):
    """The pipe carried something that is not a frame (truncated, oversized, undecodable)."""


def encode_frame(message: tuple[Any, ...]) -> bytes:
    """One message as header + marshal bytes (ValueError for a non-primitive item)."""
    data = marshal.dumps(message)
    return HEADER.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader) -> tuple[object, ...] | None:
    """The next message; None at a clean end of stream, FrameError on a broken one."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise FrameError("stream ended inside a frame header") from exc
        return None
    (size,) = HEADER.unpack(header)
    if size > MAX_FRAME:
        raise FrameError(f"frame of {size} bytes exceeds {MAX_FRAME}")
    try:
        data = await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        raise FrameError(f"stream ended {size - len(exc.partial)} bytes short of a frame") from exc
    try:
        message = marshal.loads(data)  # noqa: S302 (our own child, primitives only)
    except (EOFError, ValueError, TypeError) as exc:
        raise FrameError(f"undecodable frame: {exc}") from exc
    if not isinstance(message, tuple) or not message or not isinstance(message[0], str):
        raise FrameError(f"a frame must hold a tagged tuple, got {type(message).__name__}")
    return message
