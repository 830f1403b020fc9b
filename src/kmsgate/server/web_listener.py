"""The web listener (dashboard, portal, /metrics) run by uvicorn inside the service's loop.

uvicorn has no deadline for receiving a request (its keep-alive timer stops at the first byte)
and accepts connections until the process runs out of descriptors, which would starve the KMS
host in the same process. `WebGuard` adds both bounds: a client has `request_timeout` seconds
to send a complete request, and at most `max_connections` are open; at that limit the oldest
connection still waiting for a request is closed to make room, so a new client (a /healthz
probe, an administrator) gets in while idle or dribbling connections hold the rest. A client
that stops reading its answers (pipelined requests, never read) has as long to take them:
one whose answer has not drained below the transport's low-water mark within
`request_timeout` is aborted, or it would hold its place, and its open response, for good;
meanwhile it is evictable like a waiting one. Its kernel send buffer is capped (the kernel
would otherwise take up to 4 MiB of answers for it before the transport saw any backlog).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import ClassVar

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("kmsgate.web")

# What the guard did is summed up at most this often, so a flood makes a few log lines.
REPORT_INTERVAL = 10.0
# The web listener's share of the open-files limit; the rest stays for KMS clients, the
# database, the record writer's pipes and the log.
FD_SHARE = 4
MIN_WEB_CONNECTIONS = 16
# A web connection's kernel send buffer: pages and static files are small, and a client
# that reads nothing fills it within a second (a dashboard over 100 ms of round trip still
# gets 2.5 MB/s).
SEND_BUFFER = 256 * 1024
_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 5\r\n"
    b"content-length: 0\r\n\r\n"
)


class WebGuard:
    """Bounds one web listener: connections open at once and time to send a request."""

    def __init__(self, *, max_connections: int, request_timeout: float) -> None:
        """max_connections: open at once; request_timeout: seconds to send one request."""
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.open: set[GuardedH11Protocol] = set()
        # Connections waiting for (the rest of) a request, the longest-waiting first.
        self.waiting: OrderedDict[GuardedH11Protocol, None] = OrderedDict()
        self.timed_out = 0
        self.evicted = 0
        self.refused = 0
        self.stalled = 0
        self._reported = (0, 0, 0, 0)
        self._last_report = float("-inf")
        self._report_timer: asyncio.TimerHandle | None = None

    def admit(self, connection: GuardedH11Protocol) -> bool:
        """Make room for a new connection, or say it must be refused."""
        if len(self.open) >= self.max_connections:
            oldest = next(iter(self.waiting), None)
            if oldest is None:
                # Every connection is busy with a request: refusing is all that is left.
                self.refused += 1
                self._note()
                return False
            self.evicted += 1
            self._note()
            oldest.close_waiting()
        self.open.add(connection)
        return True

    def forget(self, connection: GuardedH11Protocol) -> None:
        """A connection ended."""
        self.open.discard(connection)
        self.waiting.pop(connection, None)

    def note_timeout(self) -> None:
        """A connection was closed for not sending a complete request in time."""
        self.timed_out += 1
        self._note()

    def note_stalled(self) -> None:
        """A connection was aborted for not reading its answer in time."""
        self.stalled += 1
        self._note()

    def _note(self) -> None:
        if self._report_timer is not None:
            return
        delay = self._last_report + REPORT_INTERVAL - time.monotonic()
        if delay <= 0:
            self.report()
        else:
            loop = asyncio.get_running_loop()
            self._report_timer = loop.call_later(delay, self.report)

    def report(self) -> None:
        """Log what happened since the last report (one WARNING line), if anything did."""
        self._report_timer = None
        now = (self.timed_out, self.evicted, self.refused, self.stalled)
        timed_out, evicted, refused, stalled = (
            a - b for a, b in zip(now, self._reported, strict=True)
        )
        if not (timed_out or evicted or refused or stalled):
            return
        self._reported = now
        self._last_report = time.monotonic()
        log.warning(
            "web listener: closed %d connections that sent no complete request within %g s; "
            "at the limit of %d connections, closed %d waiting ones to make room and refused "
            "%d (%d open now); aborted %d that read no answer within %g s",
            timed_out,
            self.request_timeout,
            self.max_connections,
            evicted,
            refused,
            len(self.open),
            stalled,
            self.request_timeout,
        )

    def cancel_report(self) -> None:
        """Stop the pending report timer (the listener is shutting down)."""
        if self._report_timer is not None:
            self._report_timer.cancel()
            self.report()


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request deadline and a place in a WebGuard."""

    guard: ClassVar[WebGuard]
    _deadline: asyncio.TimerHandle | None = None
    _stalled: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.admit(self):
            transport.write(_BUSY)
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self._await_request()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            # The next request has the full timeout again, counted from this answer.
            self._await_request()
            self._follow_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        self._stop_stall_timer()
        self.guard.forget(self)
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stalled is None:
            self._stalled = self.loop.call_later(self.guard.request_timeout, self._stalled_out)
            # Evictable meanwhile: at the limit, a new client goes before an unread answer.
            self.guard.waiting[self] = None

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_stall_timer()

    def _stop_stall_timer(self) -> None:
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
            if self._deadline is None:  # not waiting for a request either
                self.guard.waiting.pop(self, None)

    def _stalled_out(self) -> None:
        self._stalled = None
        if self.transport.is_closing() and not self.transport.get_write_buffer_size():
            return
        self.guard.note_stalled()
        self.transport.abort()

    def close_waiting(self) -> None:
        """Close this connection, which has no request in progress or an answer its client
        does not read (the guard needs room)."""
        self._stop_deadline()
        self._stop_stall_timer()
        self.guard.forget(self)
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        else:
            self.transport.close()

    def _await_request(self) -> None:
        self._stop_deadline()
        self._deadline = self.loop.call_later(self.guard.request_timeout, self._timed_out)
        self.guard.waiting[self] = None
        self.guard.waiting.move_to_end(self)

    def _follow_request(self) -> None:
        # IDLE: no complete request line and headers yet; SEND_BODY: the body is incomplete.
        if self.transport.is_closing() or self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            self._stop_deadline()
            self.guard.waiting.pop(self, None)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        self.guard.waiting.pop(self, None)
        if self.transport.is_closing():
            return
        self.guard.note_timeout()
        if self.conn.our_state is h11.IDLE:
            # No answer started: say why the connection ends (a browser then shows it).
            self.transport.write(_TIMED_OUT)
        self.transport.close()


def _guarded_protocol(web_guard: WebGuard) -> type[GuardedH11Protocol]:
    class Guarded(GuardedH11Protocol):
        guard = web_guard

    return Guarded


def connection_limit(configured: int, open_files: int) -> int:
    """The web listener's connection limit: configured, but at most its share of descriptors."""
    return min(configured, max(MIN_WEB_CONNECTIONS, open_files // FD_SHARE))


class EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: the service owns SIGINT/SIGTERM/SIGHUP."""

    guard: WebGuard | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    @property
    def port(self) -> int | None:
        for server in self.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return None


async def _serve(server: EmbeddedUvicorn, where: str) -> None:
    try:
        await server.serve()
    except SystemExit:
        # uvicorn reports a failed bind by logging it and calling sys.exit(3); inside a task
        # that would escape the whole event loop.
        raise OSError(f"web listener {where} could not bind (see the log above)") from None
    finally:
        if server.guard is not None:
            server.guard.cancel_report()


async def start_web_listener(
    app: FastAPI,
    host: str,
    port: int,
    *,
    cert: str | None,
    key: str | None,
    max_connections: int = 1000,
    request_timeout: float = 10.0,
) -> tuple[EmbeddedUvicorn, asyncio.Task[None]]:
    """Serve `app` until `server.should_exit`; returns once it listens (or raises)."""
    open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    limit = connection_limit(max_connections, open_files)
    if limit < max_connections:
        log.warning(
            "web listener: at most %d connections (a quarter of the open-files limit %d), not %d",
            limit,
            open_files,
            max_connections,
        )
    guard = WebGuard(max_connections=limit, request_timeout=request_timeout)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=_guarded_protocol(guard),
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        # The app applies --trust-proxy itself (web/proxies.py), so only those proxies count.
        proxy_headers=False,
        ssl_certfile=cert,
        ssl_keyfile=key,
    )
    server = EmbeddedUvicorn(config)
    server.guard = guard
    task = asyncio.create_task(_serve(server, f"{host}:{port}"))
    while not server.started:
        if task.done():
            task.result()
            raise OSError(f"web listener {host}:{port} did not start")
        await asyncio.sleep(0.01)
    return server, task
