"""Which connections a host takes: source policy, connection caps, lifetimes; its counters."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from kmsgate.access.source import SourcePolicy
from kmsgate.config.settings import ServeSettings
from kmsgate.net import Peer
from kmsgate.observability.metrics import Metrics
from kmsgate.server.idle import IdleTimer, TimerSlots
from kmsgate.server.outbox import AnswerOutbox

log: Final = logging.getLogger("kmsgate.server")


class HostConnection(Protocol):
    """What the host needs of an open connection: a KmsConnection or a relayed one."""

    def close(self) -> None: ...

    def lifetime_over(self) -> None:
        """Its --connection-lifetime has passed: the host counts it and closes it."""
        ...


@dataclass
class HostStats:
    """Counters the host keeps about itself."""

    connections_accepted: int = 0
    connections_rejected: int = 0
    connections_denied: int = 0
    connections_open: int = 0
    activations: int = 0
    refusals: int = 0
    faults: int = 0
    protocol_closes: int = 0
    idle_closes: int = 0
    connections_source_limited: int = 0
    lifetime_closes: int = 0
    request_limit_closes: int = 0
    by_version: dict[int, int] = field(default_factory=dict)


class ConnectionLimits:
    """The admission half of KmsHost: accept() and release() around every connection."""

    def __init__(self, settings: ServeSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        # The counts themselves (compiled): reached without a look-up on the interpreted Metrics.
        self._tally = metrics.tally
        self.source_policy = SourcePolicy.from_strings(settings.allow, settings.deny)
        self._source_verdicts: dict[str, bool] = {}
        self.stats = HostStats()
        self.connections: set[HostConnection] = set()
        # Per accepted connection: its source (canonical address).
        self._limits: dict[HostConnection, str] = {}
        self._per_source: dict[str, int] = {}
        self._capped_sources: set[str] = set()
        # The loop the listeners run on, set when they open: on Python 3.11, each
        # asyncio.get_running_loop() is a getpid() system call, twice per connection.
        self.loop: asyncio.AbstractEventLoop | None = None
        # Where connections queue their answers for the end of a loop pass (set with loop).
        self.outbox: AnswerOutbox | None = None
        # The loop timers the connections' idle timers share (made with the first one).
        self._timer_slots: TimerSlots | None = None
        # Read once: a settings field is a pydantic attribute look-up (~400 instructions) and
        # these are read per connection or per request. A reload (SIGHUP) does not change
        # them: they need a restart (docs/operations.md).
        self._idle_timeout = settings.idle_timeout
        self._lifetime = settings.connection_lifetime
        self.request_limit = settings.max_requests_per_connection
        self._max_connections = settings.max_connections
        self._per_source_cap = settings.max_connections_per_source

    def accept(self, connection: HostConnection, transport: asyncio.Transport, peer: Peer) -> bool:
        """Source policy and connection limit for a new connection; counts and logs refusals."""
        if peer.port is None:
            # The client reset the connection before we got to it: there is no address to
            # judge, so this is no policy decision (and must not read like one in the log).
            log.info("a connection was reset by its client before it was accepted")
            transport.abort()
            return False
        if not self.source_allowed(peer.address):
            self.stats.connections_denied += 1
            self.metrics.connection_rejected("denied_source")
            log.warning("%s denied by the source policy", peer)
            transport.abort()
            return False
        if len(self.connections) >= self._max_connections:
            self.stats.connections_rejected += 1
            self.metrics.connection_rejected("rejected_limit")
            log.warning("%s refused: %d connections open", peer, len(self.connections))
            transport.abort()
            return False
        if not self._admit_source(connection, peer):
            transport.abort()
            return False
        self.connections.add(connection)
        self.stats.connections_accepted += 1
        self.stats.connections_open = len(self.connections)
        self._tally.connection_opened()
        return True

    def _admit_source(self, connection: HostConnection, peer: Peer) -> bool:
        """The per-source cap (the connection's own timer enforces its lifetime)."""
        source = peer.address
        open_now = self._per_source.get(source, 0)
        cap = self._per_source_cap
        if cap and open_now >= cap:
            self.stats.connections_source_limited += 1
            self.metrics.connection_rejected("rejected_source_limit")
            # One warning each time a source reaches its cap, not one per refused connection.
            if source in self._capped_sources:
                log.debug("%s refused: %d connections open from it", peer, open_now)
            else:
                self._capped_sources.add(source)
                log.warning(
                    "%s refused: %d connections open from %s (--max-connections-per-source)",
                    peer,
                    open_now,
                    source,
                )
            return False
        self._per_source[source] = open_now + 1
        self._limits[connection] = source
        return True

    def connection_timer(
        self, connection: HostConnection, on_idle: Callable[[], None]
    ) -> IdleTimer:
        """The one timer of an accepted connection: `on_idle` after --idle-timeout without
        activity, a close at --connection-lifetime."""
        loop = self.loop or asyncio.get_running_loop()
        slots = self._timer_slots
        if slots is None or slots.loop is not loop:  # a host started again on a new loop
            slots = self._timer_slots = TimerSlots(loop)
        return IdleTimer(
            self._idle_timeout,
            on_idle,
            loop,
            lifetime=self._lifetime,
            # The connection's own bound method: a partial per connection cost ~1 000
            # instructions more a fresh connection.
            on_lifetime=connection.lifetime_over,
            slots=slots,
        )

    def close_at_lifetime(self, connection: HostConnection) -> None:
        """Count and close a connection whose --connection-lifetime has passed."""
        self.stats.lifetime_closes += 1
        log.debug("closing a connection open for %g s", self._lifetime)
        connection.close()

    def release(self, connection: HostConnection) -> None:
        """Forget a connection accept() took (call once, when it is lost)."""
        if connection not in self.connections:
            return
        self.connections.discard(connection)
        self.stats.connections_open = len(self.connections)
        self._tally.connection_closed()
        source = self._limits.pop(connection, "")
        left = self._per_source.get(source, 1) - 1
        if left > 0:
            self._per_source[source] = left
        else:
            self._per_source.pop(source, None)
        self._capped_sources.discard(source)

    def set_source_policy(self, settings: ServeSettings) -> None:
        """Judge new connections by these settings' allow and deny lists from now on."""
        self.source_policy = SourcePolicy.from_strings(settings.allow, settings.deny)
        self._source_verdicts.clear()

    def source_allowed(self, address: str) -> bool:
        """The source policy's verdict, memoised: a campus has few thousand client addresses."""
        verdict = self._source_verdicts.get(address)
        if verdict is None:
            if len(self._source_verdicts) >= 65536:
                self._source_verdicts.clear()
            verdict = self._source_verdicts[address] = self.source_policy.allows(address)
        return verdict
