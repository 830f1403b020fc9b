"""One relayed client connection: both sides, backpressure, held answers, its window."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

from kmsgate.net import Peer
from kmsgate.protocol.engine import filetime_from_unix
from kmsgate.protocol.events import (
    ActivationRefused,
    ActivationServed,
    ConnectionClosed,
    FaultSent,
    ObserverEvent,
    ObserverNote,
)
from kmsgate.protocol.observer import MAX_PENDING_CALLS, ConversationObserver
from kmsgate.protocol.session import RequestPolicy
from kmsgate.server.host import KmsHost
from kmsgate.server.idle import IdleTimer
from kmsgate.server.relay_policy import unaccounted, withhold_refused
from kmsgate.server.relay_upstream import connect_upstream
from kmsgate.server.transport import abort_if_unread, peer_of

if TYPE_CHECKING:
    from kmsgate.access.gateway import Gateway

log = logging.getLogger("kmsgate.relay")

# Why the upstream is not read (bits): the client reads its answers too slowly, or their
# records wait for room in the record writer.
_PAUSED_FOR_WRITING = 1
_PAUSED_FOR_RECORDS = 2


@dataclass
class RelayStats:
    """Counters of one relay listener; the events themselves are counted by the host."""

    upstream_connections: int = 0
    upstream_failures: int = 0
    notes: int = 0
    bytes_to_upstream: int = 0
    bytes_to_clients: int = 0


class RelayListener(Protocol):
    """What a relayed connection needs of its listener: a Relay (relay.py builds on this)."""

    host: KmsHost
    upstream: tuple[str, int]
    connect_timeout: float
    stats: RelayStats

    @property
    def upstream_text(self) -> str: ...


class RelayConnection(asyncio.Protocol):
    """One client connection relayed to the upstream host, decoded passively on the way."""

    def __init__(self, relay: RelayListener) -> None:
        self._relay = relay
        self._host = relay.host
        self._client: asyncio.Transport | None = None
        self._upstream: asyncio.Transport | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._observer = ConversationObserver()
        self._idle_timer: IdleTimer | None = None
        self._progress = 0
        self._asked_at: collections.deque[float] = collections.deque(maxlen=MAX_PENDING_CALLS)
        self._early = bytearray()
        self._admitted = False
        self._closing = False
        # Gateway mode: the admitted window's request policy, its end, and why we closed.
        self._policy: RequestPolicy | None = None
        self._admitting = False
        self._window_end: asyncio.TimerHandle | None = None
        self._end_reason = ""
        self.peer = Peer("unknown")
        # Upstream answers waiting for their records to be handed over (as the host holds
        # its own), why the upstream is not read, and whether it closed meanwhile.
        self._held: bytearray | None = None
        self._upstream_paused_for = 0
        self._upstream_gone = False

    # -- client side -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast, not a check.
        client = cast(asyncio.Transport, transport)
        self._client = client
        self.peer = peer_of(client)
        host = self._host
        if not host.accept(self, client, self.peer):
            return
        self._admitted = True
        # Nothing is read from the client until there is somewhere to send it.
        client.pause_reading()
        self._idle_timer = host.connection_timer(self, self._idle)
        self._connecting = asyncio.get_running_loop().create_task(self._open_upstream())

    def data_received(self, data: bytes) -> None:
        upstream, client = self._upstream, self._client
        if self._closing or client is None:
            return
        if upstream is None:
            # uvloop starts reading after connection_made, ignoring the pause made there:
            # keep this one read for later and pause now.
            self._early += data
            client.pause_reading()
            return
        self._forward(upstream, data)

    def _forward(self, upstream: asyncio.Transport, data: bytes) -> None:
        observer = self._observer
        before = observer.requests_seen
        events = observer.receive_data("client", data)
        blind = unaccounted(events) if self._policy is not None else None
        if blind is None:
            upstream.write(data)
            self._relay.stats.bytes_to_upstream += len(data)
        if observer.requests_seen != before:
            now = time.perf_counter()
            self._asked_at.extend([now] * (observer.requests_seen - before))
        self._handle(events)
        if blind is not None:
            # A gateway counts the machines it serves: a call it could not follow (a call id
            # reused, calls forgotten, framing lost) would be served uncounted.
            log.warning("%s relay closed, the client's bytes not forwarded: %s", self.peer,
                        blind.reason)  # fmt: skip
            self._end_reason = f"the relay cannot account for the client's call: {blind.reason}"
            self._shutdown()

    def eof_received(self) -> bool | None:
        # Half-close: the host may still answer what the client sent before its EOF. (While
        # connecting, reading is paused after any data, so an EOF then ends an empty talk.)
        upstream = self._upstream
        if upstream is not None and not upstream.is_closing() and upstream.can_write_eof():
            upstream.write_eof()
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        # Dropped, not only cancelled: they hold bound methods of this connection (a cycle).
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._window_end is not None:
            self._window_end.cancel()
            self._window_end = None
        if not self._admitted:
            return
        if self._host.gateway is not None:
            self._host.gateway.forget(self.peer, self._end_reason)
        self._handle(self._observer.connection_closed("client"))
        self._shutdown()
        self._host.release(self)

    def pause_writing(self) -> None:
        # The client reads slower than the host answers: stop reading the host.
        self._pause_upstream(_PAUSED_FOR_WRITING)

    def resume_writing(self) -> None:
        self._resume_upstream(_PAUSED_FOR_WRITING)

    def _pause_upstream(self, reason: int) -> None:
        upstream = self._upstream
        if not self._upstream_paused_for and upstream is not None and not upstream.is_closing():
            upstream.pause_reading()
        self._upstream_paused_for |= reason

    def _resume_upstream(self, reason: int) -> None:
        self._upstream_paused_for &= ~reason
        upstream = self._upstream
        if not self._upstream_paused_for and upstream is not None and not upstream.is_closing():
            upstream.resume_reading()

    def close(self) -> None:
        """Close both sides (KmsHost.stop() calls this)."""
        self._shutdown()

    def lifetime_over(self) -> None:
        """Its --connection-lifetime has passed: the host counts it and closes it."""
        self._host.close_at_lifetime(self)

    def buffered(self) -> int:
        """Bytes this connection holds: write buffers (bounded by backpressure) and the
        observer's partial PDUs (bounded by the u16 frag_length)."""
        held = self._observer.buffered
        for transport in (self._client, self._upstream):
            if transport is not None:
                held += transport.get_write_buffer_size()
        return held

    # -- upstream side ---------------------------------------------------------------------

    async def _open_upstream(self) -> None:
        gateway = self._host.gateway
        if gateway is not None and not await self._admit(gateway):
            return
        why = await connect_upstream(self, self._relay.upstream, self._relay.connect_timeout)
        if why is not None:
            self._upstream_failed(why)

    async def _admit(self, gateway: Gateway) -> bool:
        """Take the address's window; False (and the connection closed) when there is none."""
        # Not cancelled by _shutdown meanwhile: the window may be taken already, and it must
        # then be handed back below.
        self._admitting = True
        try:
            admission = await gateway.admit(self.peer)
        finally:
            self._admitting = False
        if admission is None:
            log.info("%s refused: no open activation window", self.peer)
            self._shutdown()
            return False
        if self._closing:
            # The client left while its window was being taken: hand the window back.
            gateway.forget(self.peer, "the client left before it was admitted")
            return False
        self._policy = admission.policy
        self._window_end = asyncio.get_running_loop().call_later(
            admission.seconds_left(gateway.clock()), self._window_ended
        )
        return True

    def _window_ended(self) -> None:
        log.info("%s relay closed: its activation window has ended", self.peer)
        self._shutdown()

    def _upstream_failed(self, why: str) -> None:
        if self._closing:
            return
        self._relay.stats.upstream_failures += 1
        reason = f"upstream {self._relay.upstream_text} unreachable: {why}"
        log.warning("%s %s", self.peer, reason)
        self._end_reason = reason
        self._host.record(self.peer, ConnectionClosed(reason))
        self._shutdown()

    def upstream_made(self, transport: asyncio.Transport) -> None:
        """The upstream accepted the connection: start relaying."""
        if self._closing:
            transport.close()  # the client left while we were connecting
            return
        self._upstream = transport
        self._relay.stats.upstream_connections += 1
        if self._early:
            early, self._early = bytes(self._early), bytearray()
            self._forward(transport, early)
        self.set_client_reading(True)

    def upstream_data(self, data: bytes) -> None:
        """Bytes from the upstream host: decode them, then forward them (unless withheld)."""
        client = self._client
        if client is None or self._closing:
            return
        events = self._observer.receive_data("server", data)
        policy = self._policy
        withheld = (
            withhold_refused(events, policy, filetime_from_unix(time.time()))
            if policy is not None
            else None
        )
        handed_over = self._handle(events)
        if withheld is not None:
            log.warning("%s relay closed, an answer withheld: %s", self.peer, withheld)
            self._end_reason = f"an answer was withheld: {withheld}"
            self._shutdown()
        elif self._held is not None or not handed_over:
            self._hold(data)
        else:
            self._to_client(client, data)

    def _to_client(self, client: asyncio.Transport, data: bytes | bytearray) -> None:
        client.write(data)
        self._relay.stats.bytes_to_clients += len(data)

    def _hold(self, data: bytes) -> None:
        """Keep the upstream's answers until their records are handed over, as the host
        does: an answer a client received must survive a SIGKILL of this process."""
        gate = self._host.record_gate
        assert gate is not None
        if self._held is None:
            self._held = bytearray()
            self._pause_upstream(_PAUSED_FOR_RECORDS)
        self._held += data
        gate.when_handed_over(self._records_handed_over)

    def _records_handed_over(self) -> None:
        held, self._held = self._held, None
        client = self._client
        if held and client is not None and not client.is_closing():
            self._to_client(client, held)
        if self._upstream_gone:
            self._shutdown()  # the client gets what was held, then the close
            return
        self._resume_upstream(_PAUSED_FOR_RECORDS)

    def upstream_lost(self) -> None:
        """The upstream closed: so does the client, once it got what is buffered for it."""
        if not self._closing:  # a close of our own making says nothing about the upstream
            self._handle(self._observer.connection_closed("server"))
        if self._held is not None and not self._closing:
            self._upstream_gone = True  # closed once the held answers have left
            return
        self._shutdown()

    def set_client_reading(self, reading: bool) -> None:
        """Backpressure from the upstream's write buffer onto the client's reads."""
        client = self._client
        if client is None or client.is_closing() or self._upstream is None:
            return
        if reading:
            client.resume_reading()
        else:
            client.pause_reading()

    # -- shared ----------------------------------------------------------------------------

    def _handle(self, events: list[ObserverEvent]) -> bool:
        """Log, count and record the events; whether their records are all handed over."""
        for event in events:
            if isinstance(event, ObserverNote):
                self._relay.stats.notes += 1
                log.info("%s relay (%s bytes): %s", self.peer, event.direction, event.reason)
                continue
            answered = isinstance(event, ActivationServed | ActivationRefused | FaultSent)
            if answered and self._asked_at:
                # The latency a relayed client sees: from its request to the host's answer.
                elapsed = time.perf_counter() - self._asked_at.popleft()
                self._host.metrics.observe_request(elapsed)
            self._host.record(self.peer, event)
        gate = self._host.record_gate
        handed_over = gate is None or gate.hand_over()
        # Like the host, only complete PDUs count as activity (or any bytes the observer
        # could no longer frame), so a client dribbling bytes still times out.
        if self._observer.progress != self._progress:
            self._progress = self._observer.progress
            if self._idle_timer is not None:
                self._idle_timer.touch()
        return handed_over

    def _idle(self) -> None:
        self._host.stats.idle_closes += 1
        self._host.metrics.connection_idle()
        log.debug(
            "%s relay closed after %.0f s without a complete PDU",
            self.peer,
            self._host.settings.idle_timeout,
        )
        self._shutdown()

    def _shutdown(self) -> None:
        """Close both sides; each transport still flushes what it holds for its peer."""
        self._closing = True
        connecting = self._connecting
        if connecting is not None and not connecting.done() and not self._admitting:
            connecting.cancel()
        for transport in (self._client, self._upstream):
            if transport is not None and not transport.is_closing():
                transport.close()
                abort_if_unread(transport, self._host.settings.idle_timeout)
