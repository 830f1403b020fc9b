"""The asyncio edge of the KMS host: listeners, connections, timeouts, shutdown."""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol, cast

from kmsgate.access.products import ProductPolicy
from kmsgate.access.source import SourcePolicy
from kmsgate.catalog import Catalog, default_catalog
from kmsgate.config.settings import ServeSettings
from kmsgate.net import Peer
from kmsgate.observability.logs import log_activation
from kmsgate.observability.metrics import Metrics
from kmsgate.protocol import crypto
from kmsgate.protocol.counting import SeenClients
from kmsgate.protocol.engine import EngineConfig, KmsEngine, filetime_from_unix
from kmsgate.protocol.events import (
    ActivationRefused,
    ActivationServed,
    ConnectionClosed,
    Event,
    FaultSent,
)
from kmsgate.protocol.session import RequestPolicy, ServerSession, SessionSettings
from kmsgate.server.identity import HostIdentity, build_identity
from kmsgate.server.idle import IdleTimer
from kmsgate.server.transport import peer_of
from kmsgate.systemd import inherited_sockets

if TYPE_CHECKING:
    from kmsgate.access.gateway import Gateway
    from kmsgate.recording.recorder import RecordGate

log = logging.getLogger("kmsgate.server")

EventHook = Callable[[Peer, Event], None]
# Reading a connection stops while more than HIGH bytes of answers wait to be sent to it and
# resumes below LOW: a client that never reads holds one read's worth of answers, not all.
WRITE_BUFFER_HIGH = 64 * 1024
WRITE_BUFFER_LOW = 16 * 1024
# Why a connection's reading is paused (both may hold at once).
_PAUSED_FOR_WRITING = 1
_PAUSED_FOR_RECORDS = 2


class HostConnection(Protocol):
    """What the host needs of an open connection: a KmsConnection or a relayed one."""

    def close(self) -> None: ...


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


class KmsConnection(asyncio.Protocol):
    """One client connection: feeds bytes to a ServerSession and acts on its events."""

    def __init__(self, host: KmsHost) -> None:
        self._host = host
        self._transport: asyncio.Transport | None = None
        self._session: ServerSession | None = None
        self._idle_timer: IdleTimer | None = None
        self._answered = 0
        self._early: bytearray | None = None
        self._admission: asyncio.Task[None] | None = None
        self._paused_for = 0
        self._held: bytes | None = None  # answers waiting until their records are handed over
        self._backlog: bytearray | None = None  # bytes read while answers were held
        self._window_end: asyncio.TimerHandle | None = None
        self.peer = Peer("unknown")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast, not a check.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        self.peer = peer_of(transport)
        host = self._host
        if not host.accept(self, transport, self.peer):
            return
        transport.set_write_buffer_limits(WRITE_BUFFER_HIGH, WRITE_BUFFER_LOW)
        loop = asyncio.get_running_loop()
        self._idle_timer = IdleTimer(host.settings.idle_timeout, self._idle)
        if host.gateway is None:
            self._start_session()
            return
        # Gateway mode: nothing is served before this address's window is consumed.
        self._early = bytearray()
        transport.pause_reading()
        self._admission = loop.create_task(self._admit(host.gateway))

    def _start_session(self, request_policy: RequestPolicy | None = None) -> None:
        assert self._transport is not None
        sockname = self._transport.get_extra_info("sockname")
        self._session = self._host.new_session(
            sockname[1] if sockname else 1688, request_policy=request_policy
        )

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
        if self._transport is not None:
            self._transport.close()

    def _idle(self) -> None:
        self._host.stats.idle_closes += 1
        self._host.metrics.connection_idle()
        log.debug(
            "%s closed after %.0f s without a KMS request",
            self.peer,
            self._host.settings.idle_timeout,
        )
        if self._transport is not None:
            self._transport.close()

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
        started = time.perf_counter()
        events = session.receive_data(data, filetime_from_unix(time.time()))
        out = session.data_to_send()
        host = self._host
        for event in events:
            host.record(self.peer, event)
        answered = session.requests_answered
        if answered != self._answered:
            self._answered = answered
            # Only KMS requests count as activity: binds alone, or bytes dribbled without
            # completing a PDU, keep no connection open past the idle timeout.
            if self._idle_timer is not None:
                self._idle_timer.touch()
            gate = host.record_gate
            if gate is not None and not gate.hand_over():
                self._hold(out, gate)
                host.metrics.observe_request(time.perf_counter() - started)
                return
            if out:
                transport.write(out)
            host.metrics.observe_request(time.perf_counter() - started)
        elif out:
            transport.write(out)
        self._after_answers(session, transport)

    def _after_answers(self, session: ServerSession, transport: asyncio.Transport) -> None:
        """Close once the protocol broke or the connection used up its requests."""
        if session.closed:
            transport.close()
            return
        limit = self._host.settings.max_requests_per_connection
        if limit and self._answered >= limit:
            self._host.stats.request_limit_closes += 1
            log.debug("%s closed after %d requests", self.peer, self._answered)
            transport.close()

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
            transport.write(out)
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

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._window_end is not None:
            self._window_end.cancel()
        # A pending admission is not cancelled: its window may be taken already, and _admit
        # hands it back once it sees the connection gone.
        if self._host.gateway is not None:
            self._host.gateway.forget(self.peer)
        self._held = self._backlog = None
        self._host.release(self)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class KmsHost:
    """A KMS host serving one settings model on one or more listeners."""

    def __init__(
        self,
        settings: ServeSettings,
        *,
        catalog: Catalog | None = None,
        rng: random.Random | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        today: datetime | None = None,
        metrics: Metrics | None = None,
        identity: HostIdentity | None = None,
        seen_clients: SeenClients | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog or default_catalog()
        self.metrics = metrics or Metrics(self.catalog)
        self._rng = rng or random.SystemRandom()
        self._random_bytes = random_bytes
        self.identity: HostIdentity = identity or build_identity(
            self.catalog,
            epid=settings.epid,
            hwid=settings.hwid,
            lcid=settings.lcid,
            host_build=settings.host_build,
            ndr64=settings.ndr64,
            rng=self._rng,
            today=(today or datetime.now(UTC)).date(),
            path=settings.identity_path,
        )
        if seen_clients is None and settings.count_mode == "seen":
            # Shared through the store when there is one (the node syncs it), else local.
            seen_clients = SeenClients(self.identity.counter_for, shared=not settings.no_store)
        self.engine = KmsEngine(
            EngineConfig(
                activation_interval=settings.activation_interval,
                renewal_interval=settings.renewal_interval,
                client_count=settings.client_count,
                max_clock_skew=settings.max_clock_skew or None,
            ),
            self.identity.provider,
            self._product_policy(settings),
            seen_clients,
        )
        self.source_policy = SourcePolicy.from_strings(settings.allow, settings.deny)
        self._source_verdicts: dict[str, bool] = {}
        self.stats = HostStats()
        self.connections: set[HostConnection] = set()
        self.event_hooks: list[EventHook] = [self.metrics.hook]
        self.record_gate: RecordGate | None = None
        self.gateway: Gateway | None = None
        # Per accepted connection: its source (canonical address) and its lifetime timer.
        self._limits: dict[HostConnection, tuple[str, asyncio.TimerHandle | None]] = {}
        self._per_source: dict[str, int] = {}
        self._capped_sources: set[str] = set()
        self._servers: list[asyncio.Server] = []
        self._session_settings: dict[int, SessionSettings] = {}

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
        if len(self.connections) >= self.settings.max_connections:
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
        self.metrics.connection_opened()
        return True

    def _admit_source(self, connection: HostConnection, peer: Peer) -> bool:
        """The per-source cap, then the connection's lifetime timer (one per connection)."""
        settings = self.settings
        source = peer.address
        open_now = self._per_source.get(source, 0)
        cap = settings.max_connections_per_source
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
        lifetime = None
        if settings.connection_lifetime:
            loop = asyncio.get_running_loop()
            lifetime = loop.call_at(
                loop.time() + settings.connection_lifetime, self._lifetime_over, connection
            )
        self._limits[connection] = (source, lifetime)
        return True

    def _lifetime_over(self, connection: HostConnection) -> None:
        self.stats.lifetime_closes += 1
        log.debug("closing a connection open for %g s", self.settings.connection_lifetime)
        connection.close()

    def release(self, connection: HostConnection) -> None:
        """Forget a connection accept() took (call once, when it is lost)."""
        if connection not in self.connections:
            return
        self.connections.discard(connection)
        self.stats.connections_open = len(self.connections)
        self.metrics.connection_closed()
        source, lifetime = self._limits.pop(connection, ("", None))
        if lifetime is not None:
            lifetime.cancel()
        left = self._per_source.get(source, 1) - 1
        if left > 0:
            self._per_source[source] = left
        else:
            self._per_source.pop(source, None)
        self._capped_sources.discard(source)

    def apply_policies(self, settings: ServeSettings) -> None:
        """Swap source and product policies in place (SIGHUP); open connections keep going."""
        self.source_policy = SourcePolicy.from_strings(settings.allow, settings.deny)
        self._source_verdicts.clear()
        self.engine.set_product_policy(self._product_policy(settings))
        self.settings = settings

    def _product_policy(self, settings: ServeSettings) -> ProductPolicy | None:
        policy = ProductPolicy(
            self.catalog,
            allow=settings.allow_product,
            deny=settings.deny_product,
            deny_unknown=settings.deny_unknown_products,
            covered=self.identity.covers,
        )
        return policy if policy.active else None

    def source_allowed(self, address: str) -> bool:
        """The source policy's verdict, memoised: a campus has few thousand client addresses."""
        verdict = self._source_verdicts.get(address)
        if verdict is None:
            if len(self._source_verdicts) >= 65536:
                self._source_verdicts.clear()
            verdict = self._source_verdicts[address] = self.source_policy.allows(address)
        return verdict

    def new_session(
        self, port: int, *, request_policy: RequestPolicy | None = None
    ) -> ServerSession:
        settings = self._session_settings.get(port)
        if settings is None:
            settings = SessionSettings(
                port=port,
                ndr64=self.settings.ndr64,
                btfn=self.settings.btfn,
                hwid=self.identity.hwid,
            )
            self._session_settings[port] = settings
        return ServerSession(
            self.engine,
            settings,
            random_bytes=self._random_bytes,
            assoc_group_id=self._rng.getrandbits(32),
            request_policy=request_policy,
        )

    def record(self, peer: Peer, event: Event) -> None:
        """Count, log and pass on one session event."""
        stats = self.stats
        try:
            if isinstance(event, ActivationServed):
                stats.activations += 1
                version = event.request.major_version
                stats.by_version[version] = stats.by_version.get(version, 0) + 1
                log_activation(peer, event, self.catalog, self.settings.node_name)
            elif isinstance(event, ActivationRefused):
                stats.refusals += 1
                log_activation(peer, event, self.catalog, self.settings.node_name)
            elif isinstance(event, FaultSent):
                stats.faults += 1
                log.info("%s fault 0x%08X: %s", peer, event.status, event.reason)
            elif isinstance(event, ConnectionClosed):
                stats.protocol_closes += 1
                log.info("%s closed: %s", peer, event.reason)
        # Whatever the request's field values, the event must still reach the recorder.
        except Exception:
            log.exception("%s: logging %s failed", peer, type(event).__name__)
        for hook in self.event_hooks:
            try:
                hook(peer, event)
            # A failing hook (a bug) must not keep the ones after it, the recorder among
            # them, from seeing an event whose answer is already built.
            except Exception:
                log.exception("%s: event hook %r failed on %s", peer, hook, type(event).__name__)

    async def start(self, relay: Callable[[], asyncio.Protocol] | None = None) -> None:
        """Open every listener; the default IPv6 one is skipped where IPv6 is unavailable.

        In relay mode (`--upstream`) the caller passes the relay's protocol factory.
        """
        loop = asyncio.get_running_loop()
        upstream = self.settings.upstream_address
        if (upstream is None) != (relay is None):
            # relay.py builds on this module, so the host cannot build the relay itself.
            raise ValueError("a relay factory is given exactly when an upstream is set")
        factory: Callable[[], asyncio.Protocol] = relay or functools.partial(KmsConnection, self)
        for sock in inherited_sockets():
            server = await loop.create_server(factory, sock=sock, backlog=1024)
            self._servers.append(server)
        for host, port in [] if self._servers else self.settings.listen_addresses:
            try:
                server = await loop.create_server(
                    factory, host, port, reuse_address=True, backlog=1024
                )
            except OSError as exc:
                if ":" in host and exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                    log.warning("IPv6 listener [%s]:%d unavailable: %s", host, port, exc)
                    continue
                await self.stop()
                raise
            self._servers.append(server)
        for host, port in self.addresses:
            log.info("listening on %s", f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        log.info("cipher: %s", crypto.CIPHER_BACKEND)
        if upstream is not None:
            log.info("relaying every connection to %s", self.settings.upstream)
            return
        identity = self.identity
        self._warn_about_the_count()
        log.info(
            "host build %d (%s), LCID %d, HWID %s, NDR64 %s, BTFN %s",
            identity.host_build.build,
            identity.host_build.name,
            identity.lcid,
            identity.hwid.hex().upper(),
            "on" if self.settings.ndr64 else "off",
            "on" if self.settings.btfn else "off",
        )
        # The Windows key at info; the Office keys only at debug (`kmsgate identity show`).
        for index, held in enumerate(identity.keys):
            log.log(
                logging.INFO if index == 0 else logging.DEBUG,
                "host key %s (%s, group %d): ePID %s%s",
                held.name,
                held.csvlk.name,
                held.csvlk.group_id,
                "new for every answer"
                if identity.per_request and held.source != "configured"
                else held.epid,
                f"; {len(identity.keys) - 1} Office host keys (`kmsgate identity show`)"
                if index == 0 and len(identity.keys) > 1
                else "",
            )

    def _warn_about_the_count(self) -> None:
        """Say which products a fixed count too low for them leaves unactivated."""
        settings = self.settings
        if settings.count_mode == "seen":
            if settings.client_count is not None:
                log.warning("--client-count is ignored with --count-mode seen")
            return
        count = settings.client_count
        if count is None:
            return
        starved: dict[int, list[str]] = {}
        for kms in self.catalog.kms_ids:
            listed = kms.superseded_by is None and not kms.is_preview
            served = self.identity.covers(kms.id) or not settings.deny_unknown_products
            if listed and served and kms.n_count_policy > count:
                starved.setdefault(kms.n_count_policy, []).append(kms.name)
        for needed, names in sorted(starved.items()):
            names.sort(key=str.casefold)
            shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
            log.warning(
                "--client-count %d is below the %d machines these products need, so their "
                "clients will not activate: %s",
                count,
                needed,
                shown,
            )

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every bound listening socket."""
        out = []
        for server in self._servers:
            for sock in server.sockets:
                name = sock.getsockname()
                out.append((name[0], name[1]))
        return out

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Stop accepting, let open connections finish briefly, then close them."""
        for server in self._servers:
            server.close()
        deadline = time.monotonic() + drain_timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    async def __aenter__(self) -> KmsHost:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop(drain_timeout=0)


def ipv6_available() -> bool:
    """Whether this machine can open an IPv6 socket on ::1."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True
