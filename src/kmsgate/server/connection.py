"""One client connection of the KMS host: reads, backpressure, held answers, its limits."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol, cast

from kmsgate.config.settings import ServeSettings
from kmsgate.net import Peer
from kmsgate.observability.metrics import Metrics
from kmsgate.protocol.engine import filetime_from_unix
from kmsgate.protocol.events import Event
from kmsgate.protocol.session import RequestPolicy, ServerSession
from kmsgate.server.idle import IdleTimer
from kmsgate.server.limits import HostConnection, HostStats
from kmsgate.server.outbox import AnswerOutbox
from kmsgate.server.transport import abort_if_unread, peer_of

if TYPE_CHECKING:
    from kmsgate.access.gateway import Gateway
    from kmsgate.recording.recorder import RecordGate

log: Final = logging.getLogger("kmsgate.server")

# Reading a connection stops while more than HIGH bytes of answers wait to be sent to it and
# resumes below LOW: a client that never reads holds one read's worth of answers, not all.
# Set per connection although HIGH is every loop's default: uvloop's own LOW is 16 bytes.
WRITE_BUFFER_HIGH: Final = 64 * 1024
WRITE_BUFFER_LOW: Final = 16 * 1024
# Read as constants, not as attributes of the time module at every request (compiled).
_perf_counter: Final = time.perf_counter
_wall_time: Final = time.time
# Why a connection's reading is paused (several may hold at once).
_PAUSED_FOR_WRITING: Final = 1
_PAUSED_FOR_RECORDS: Final = 2
_PAUSED_FOR_TURN: Final = 4
# A read this large is not a KMS client's (a request is some 300 bytes): the connection
# reads no more in this pass of the loop, so one flooding client cannot hold it (uvloop
# reads up to 32 times 256 KiB per readiness).
LARGE_READ: Final = 64 * 1024
# Answers sent before the first activation that may still wait as opening ones (a bind's and
# an alter_context's); more (faults) leave at the end of their pass.
OPENING_PRELUDES: Final = 2
# PDUs besides the requests --max-requests-per-connection allows (binds, alter_contexts):
# faulted requests count against the cap too, past these.
EXTRA_PDUS: Final = 16


class ConnectionHost(Protocol):
    """What a connection needs of its host: a KmsHost (host.py builds on this module)."""

    settings: ServeSettings
    # --max-requests-per-connection, read from the settings once (KmsHost).
    request_limit: int
    stats: HostStats
    metrics: Metrics
    gateway: Gateway | None
    record_gate: RecordGate | None
    outbox: AnswerOutbox | None

    def accept(
        self, connection: HostConnection, transport: asyncio.Transport, peer: Peer
    ) -> bool: ...

    def release(self, connection: HostConnection) -> None: ...

    def close_at_lifetime(self, connection: HostConnection) -> None: ...

    def connection_timer(
        self, connection: HostConnection, on_idle: Callable[[], None]
    ) -> IdleTimer: ...

    def new_session(
        self, port: int, *, request_policy: RequestPolicy | None = None
    ) -> ServerSession: ...

    def record(self, peer: Peer, event: Event) -> None: ...


# Until connection_made names the client (Peer is immutable, so one instance serves all).
_UNKNOWN_PEER: Final = Peer("unknown")


class KmsConnection(asyncio.Protocol):
    """One client connection: feeds bytes to a ServerSession and acts on its events."""

    def __init__(self, host: ConnectionHost, port: int | None = None) -> None:
        """`port`: the listener's, when known (else read from the socket)."""
        self._host = host
        self._port = port
        self._transport: asyncio.Transport | None = None
        self._session: ServerSession | None = None
        self._idle_timer: IdleTimer | None = None
        self._answered = 0
        self._request_limit = host.request_limit
        self._early: bytearray | None = None
        self._admission: asyncio.Task[None] | None = None
        self._paused_for = 0
        self._held: bytes | None = None  # answers waiting until their records are handed over
        self._unsent: bytes | None = None  # answers queued in the host's outbox
        self._backlog: bytearray | None = None  # bytes read while answers were held
        self._window_end: asyncio.TimerHandle | None = None
        self._preludes = 0  # answers sent before the first activation
        self._abort: asyncio.TimerHandle | None = None
        self.peer = _UNKNOWN_PEER

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast, not a check.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        self.peer = peer_of(transport)
        host = self._host
        if not host.accept(self, transport, self.peer):
            return
        transport.set_write_buffer_limits(WRITE_BUFFER_HIGH, WRITE_BUFFER_LOW)
        self._idle_timer = host.connection_timer(self, self._idle)
        if host.gateway is None:
            self._start_session()
            return
        # Gateway mode: nothing is served before this address's window is consumed.
        self._early = bytearray()
        transport.pause_reading()
        self._admission = asyncio.get_running_loop().create_task(self._admit(host.gateway))

    def _start_session(self, request_policy: RequestPolicy | None = None) -> None:
        assert self._transport is not None
        port = self._port
        if port is None:
            sockname = self._transport.get_extra_info("sockname")
            port = sockname[1] if sockname else 1688
        self._session = self._host.new_session(port, request_policy=request_policy)

    async def _admit(self, gateway: Gateway) -> None:
        admission = await gateway.admit(self.peer)
        transport = self._transport
        if transport is None or transport.is_closing():
            if admission is not None:
                gateway.forget(self.peer, "the client left before it was admitted")
            return
        if admission is None:
            log.info("%s refused: no open activation window", self.peer)
            transport.close()
            return
        window = admission.window
        log.info("%s admitted by the window of %s", self.peer, window.username)
        # The policy refuses requests after the window's end; this closes the connection then.
        self._window_end = asyncio.get_running_loop().call_later(
            admission.seconds_left(gateway.clock()), self._window_ended
        )
        self._start_session(admission.policy)
        early, self._early = bytes(self._early or b""), None
        transport.resume_reading()
        if early:
            self.data_received(early)

    def _window_ended(self) -> None:
        log.info("%s closed: its activation window has ended", self.peer)
        self._close()

    def _idle(self) -> None:
        self._host.stats.idle_closes += 1
        self._host.metrics.connection_idle()
        timer = self._idle_timer
        # The timer's own timeout: the settings' may have been reloaded since (unapplied).
        timeout = 0.0 if timer is None else timer.timeout
        log.debug("%s closed after %.0f s without a KMS request", self.peer, timeout)
        self._close()

    def data_received(self, data: bytes) -> None:
        session, transport = self._session, self._transport
        if session is None or transport is None:
            # uvloop delivers a first read despite pause_reading() in connection_made.
            if self._early is not None and transport is not None:
                self._early += data
                transport.pause_reading()
                if len(self._early) > 65536:
                    transport.close()
            return
        if self._held is not None:
            # A read already under way when reading paused: it waits with the answers.
            if self._backlog is None:
                self._backlog = bytearray()
            self._backlog += data
            return
        started = _perf_counter()
        events = session.receive_data(data, filetime_from_unix(_wall_time()))
        out = session.data_to_send()
        host = self._host
        for event in events:
            host.record(self.peer, event)
        answered = session.requests_answered
        if answered != self._answered:
            opening = self._answered == 0
            self._answered = answered
            # Only KMS requests count as activity: binds alone, or bytes dribbled without
            # completing a PDU, keep no connection open past the idle timeout.
            if self._idle_timer is not None:
                self._idle_timer.touch()
            gate = host.record_gate
            if gate is not None and not gate.hand_over():
                self._hold(out, gate)
                host.metrics.observe_request(_perf_counter() - started)
                return
            if out:
                self._send(out, opening=opening)
            host.metrics.observe_request(_perf_counter() - started)
        elif out:
            # A bind's answer (or a fault) before any activation: the conversation opens.
            self._preludes += 1
            self._send(out, opening=self._answered == 0 and self._preludes <= OPENING_PRELUDES)
        self._after_answers(session, transport)
        if len(data) >= LARGE_READ and not transport.is_closing():
            self._pause_reading(_PAUSED_FOR_TURN)
            asyncio.get_running_loop().call_soon(self._resume_reading, _PAUSED_FOR_TURN)

    def _send(self, out: bytes, *, opening: bool = False) -> None:
        """Queue answers for the end of this loop pass (server/outbox.py), in order; those
        opening the conversation until a pass brings no more answers."""
        outbox = self._host.outbox
        if outbox is None:
            assert self._transport is not None
            self._transport.write(out)
        elif self._unsent is None:
            self._unsent = out
            outbox.add(self, opening=opening)
        else:
            self._unsent += out
            if len(self._unsent) > WRITE_BUFFER_HIGH:
                # To the transport now: its backpressure (pause_writing) then stops reading.
                self.send_queued()

    def send_queued(self) -> None:
        """Write the answers queued in the outbox (nothing once the client is gone)."""
        out, self._unsent = self._unsent, None
        transport = self._transport
        if out and transport is not None and not transport.is_closing():
            transport.write(out)

    def _close(self) -> None:
        """Close after sending what is queued; abort if the client does not take it in time."""
        self.send_queued()
        transport = self._transport
        if transport is None:
            return
        transport.close()
        if self._abort is None:
            self._abort = abort_if_unread(transport, self._host.settings.idle_timeout)

    def _after_answers(self, session: ServerSession, transport: asyncio.Transport) -> None:
        """Close once the protocol broke or the connection used up its requests."""
        if session.closed:
            self._close()
            return
        limit = self._request_limit
        if limit and (self._answered >= limit or session.pdus_handled >= limit + EXTRA_PDUS):
            self._host.stats.request_limit_closes += 1
            log.debug("%s closed after %d requests", self.peer, self._answered)
            self._close()

    # -- backpressure: reading stops while answers cannot leave ------------------------------

    def pause_writing(self) -> None:
        self._pause_reading(_PAUSED_FOR_WRITING)

    def resume_writing(self) -> None:
        self._resume_reading(_PAUSED_FOR_WRITING)

    def _pause_reading(self, reason: int) -> None:
        transport = self._transport
        if not self._paused_for and transport is not None and not transport.is_closing():
            transport.pause_reading()
        self._paused_for |= reason

    def _resume_reading(self, reason: int) -> None:
        self._paused_for &= ~reason
        transport = self._transport
        if not self._paused_for and transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _hold(self, out: bytes, gate: RecordGate) -> None:
        """Keep these answers until their records are handed over; read nothing meanwhile."""
        self._held = out
        self._pause_reading(_PAUSED_FOR_RECORDS)
        gate.when_handed_over(self._records_handed_over)

    def _records_handed_over(self) -> None:
        out, self._held = self._held, None
        transport, session = self._transport, self._session
        if transport is None or session is None or transport.is_closing():
            return
        if out:
            self._send(out)
        self._after_answers(session, transport)
        if transport.is_closing():
            return
        if self._backlog:
            # Served from the loop, not from inside the record writer's hand-over.
            asyncio.get_running_loop().call_soon(self._serve_backlog)
            return
        self._resume_reading(_PAUSED_FOR_RECORDS)

    def _serve_backlog(self) -> None:
        backlog, self._backlog = self._backlog, None
        if backlog:
            self.data_received(bytes(backlog))
        if self._held is None:
            self._resume_reading(_PAUSED_FOR_RECORDS)

    def eof_received(self) -> bool | None:
        # A client that half-closes after its last request: its answers may still wait in
        # the outbox (an opening answer waits a pass or more); they leave before the transport
        # closes, as it does when this returns None. Answers held for their records are not
        # here: reading (and so the end of input) waits for them.
        self.send_queued()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        # Dropped, not only cancelled: the idle timer holds a bound method of this
        # connection, a cycle that would leave the connection, its session and its transport
        # to the garbage collector (a young-generation pass every 70 connections or so).
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._window_end is not None:
            self._window_end.cancel()
            self._window_end = None
        if self._abort is not None:
            self._abort.cancel()
            self._abort = None
        # A pending admission is not cancelled: its window may be taken already, and _admit
        # hands it back once it sees the connection gone.
        if self._host.gateway is not None:
            self._host.gateway.forget(self.peer)
        self._held = self._backlog = self._unsent = None
        self._host.release(self)

    def close(self) -> None:
        self._close()

    def lifetime_over(self) -> None:
        """Its --connection-lifetime has passed: the host counts it and closes it."""
        self._host.close_at_lifetime(self)
