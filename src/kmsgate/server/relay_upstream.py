"""The relay's connection to the upstream host: opening it, and passing on what it does."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Protocol, cast


class UpstreamReceiver(Protocol):
    """What the upstream side reports to: a RelayConnection (relay_connection.py)."""

    def upstream_made(self, transport: asyncio.Transport) -> None: ...

    def upstream_data(self, data: bytes) -> None: ...

    def upstream_lost(self) -> None: ...

    def set_client_reading(self, reading: bool) -> None: ...


def _os_error_text(exc: OSError) -> str:
    """Why a connect failed: the errno text rather than asyncio's "Connect call failed"."""
    if exc.errno and not isinstance(exc, socket.gaierror):
        return os.strerror(exc.errno)
    return exc.strerror or str(exc)


class _UpstreamSide(asyncio.Protocol):
    """The connection to the upstream host; hands everything to its RelayConnection."""

    def __init__(self, relay: UpstreamReceiver) -> None:
        self._relay = relay

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._relay.upstream_made(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self._relay.upstream_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._relay.upstream_lost()

    def pause_writing(self) -> None:
        self._relay.set_client_reading(False)

    def resume_writing(self) -> None:
        self._relay.set_client_reading(True)


async def connect_upstream(
    receiver: UpstreamReceiver, upstream: tuple[str, int], timeout: float
) -> str | None:
    """Connect to the upstream host for `receiver`; None once connected, else why not."""
    address, port = upstream
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            await loop.create_connection(lambda: _UpstreamSide(receiver), address, port)
    except TimeoutError:
        return f"no connection within {timeout:g} s"
    except OSError as exc:
        return _os_error_text(exc)
    return None
