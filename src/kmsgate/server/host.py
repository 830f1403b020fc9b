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
from kmsgate.config import ServeSettings
from kmsgate.observability.logs import log_activation
from kmsgate.observability.metrics import Metrics
from kmsgate.protocol.engine import EngineConfig, KmsEngine, filetime_from_unix
from kmsgate.protocol.session import (
    ActivationRefused,
    ActivationServed,
    ConnectionClosed,
    Event,
    FaultSent,
    ServerSession,
    SessionSettings,
)
from kmsgate.server.identity import HostIdentity, build_identity
from kmsgate.server.idle import IdleTimer
from kmsgate.server.systemd import inherited_sockets

if TYPE_CHECKING:
    from kmsgate.access.gateway import Gateway

log = logging.getLogger("kmsgate.server")

EventHook = Callable[[str, Event], None]


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
    by_version: dict[int, int] = field(default_factory=dict)


def _peer_text(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if not peer:
        return "unknown"
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
        self.peer = "unknown"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast, not a check.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        self.peer = _peer_text(transport)
        host = self._host
        if not host.accept(self, transport, self.peer):
            return
        loop = asyncio.get_running_loop()
        self._idle_timer = IdleTimer(host.settings.idle_timeout, self._idle)
        if host.gateway is None:
            self._start_session()
            return
        # Gateway mode: nothing is served before this address's window is consumed.
        self._early = bytearray()
        transport.pause_reading()
        self._admission = loop.create_task(self._admit(host.gateway))

    def _start_session(self) -> None:
        assert self._transport is not None
        sockname = self._transport.get_extra_info("sockname")
        self._session = self._host.new_session(sockname[1] if sockname else 1688)

    async def _admit(self, gateway: Gateway) -> None:
        window = await gateway.admit(self.peer)
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if window is None:
            log.info("%s refused: no open activation window", self.peer)
            transport.close()
            return
        log.info("%s admitted by the window of %s", self.peer, window.username)
        self._start_session()
        early, self._early = bytes(self._early or b""), None
        transport.resume_reading()
        if early:
            self.data_received(early)

    def _idle(self) -> None:
        self._host.stats.idle_closes += 1
        self._host.metrics.connection_idle()
        log.debug(
            "%s closed after %.0f s without a complete PDU",
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
        started = time.perf_counter()
        served_before = session.pdus_handled
        events = session.receive_data(data, filetime_from_unix(time.time()))
        out = session.data_to_send()
        if out:
            transport.write(out)
            if session.requests_answered != self._answered:
                self._answered = session.requests_answered
                self._host.metrics.observe_request(time.perf_counter() - started)
        # Only complete PDUs count as activity, so a client dribbling bytes still times out.
        if session.pdus_handled != served_before and self._idle_timer is not None:
            self._idle_timer.touch()
        for event in events:
            self._host.record(self.peer, event)
        if session.closed:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._admission is not None and not self._admission.done():
            self._admission.cancel()
        if self._host.gateway is not None:
            self._host.gateway.forget(self.peer)
        if self._session is not None:
            self._host.metrics.connection_closed()
        self._host.connections.discard(self)
        self._host.stats.connections_open = len(self._host.connections)

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
    ) -> None:
        self.settings = settings
        self.catalog = catalog or default_catalog()
        self.metrics = metrics or Metrics(self.catalog)
        self._rng = rng or random.SystemRandom()
        self._random_bytes = random_bytes
        self.identity: HostIdentity = build_identity(
            self.catalog,
            epid=settings.epid,
            hwid=settings.hwid,
            lcid=settings.lcid,
            ndr64=settings.ndr64,
            rng=self._rng,
            today=(today or datetime.now(UTC)).date(),
        )
        self.engine = KmsEngine(
            EngineConfig(
                activation_interval=settings.activation_interval,
                renewal_interval=settings.renewal_interval,
                client_count=settings.client_count,
                max_clock_skew=settings.max_clock_skew,
            ),
            self.identity.provider,
            self._product_policy(settings),
        )
        self.source_policy = SourcePolicy.from_strings(settings.allow, settings.deny)
        self._source_verdicts: dict[str, bool] = {}
        self.stats = HostStats()
        self.connections: set[HostConnection] = set()
        self.event_hooks: list[EventHook] = [self.metrics.hook]
        self.gateway: Gateway | None = None
        self._servers: list[asyncio.Server] = []
        self._session_settings: dict[int, SessionSettings] = {}

    def accept(
        self, connection: HostConnection, transport: asyncio.Transport, peer_text: str
    ) -> bool:
        """Source policy and connection limit for a new connection; counts and logs refusals."""
        peer = transport.get_extra_info("peername")
        if not peer:
            # The client reset the connection before we got to it: there is no address to
            # judge, so this is no policy decision (and must not read like one in the log).
            log.info("a connection was reset by its client before it was accepted")
            transport.abort()
            return False
        if not self.source_allowed(peer[0]):
            self.stats.connections_denied += 1
            self.metrics.connection_rejected("denied_source")
            log.warning("%s denied by the source policy", peer_text)
            transport.abort()
            return False
        if len(self.connections) >= self.settings.max_connections:
            self.stats.connections_rejected += 1
            self.metrics.connection_rejected("rejected_limit")
            log.warning("%s refused: %d connections open", peer_text, len(self.connections))
            transport.abort()
            return False
        self.connections.add(connection)
        self.stats.connections_accepted += 1
        self.stats.connections_open = len(self.connections)
        self.metrics.connection_opened()
        return True

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

    def new_session(self, port: int) -> ServerSession:
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
        )

    def record(self, peer: str, event: Event) -> None:
        """Count, log and pass on one session event."""
        stats = self.stats
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
        for hook in self.event_hooks:
            hook(peer, event)

    async def start(self) -> None:
        """Open every listener; the default IPv6 one is skipped where IPv6 is unavailable."""
        loop = asyncio.get_running_loop()
        factory: Callable[[], asyncio.Protocol] = functools.partial(KmsConnection, self)
        upstream = self.settings.upstream_address
        if upstream is not None:
            from kmsgate.server.relay import relay_factory  # relay.py imports this module

            factory = relay_factory(self, upstream)
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
        for address in self.addresses:
            log.info("listening on %s", address)
        if upstream is not None:
            log.info("relaying every connection to %s", self.settings.upstream)
            return
        log.info(
            "host build %d, LCID %d, HWID %s, NDR64 %s, BTFN %s",
            self.identity.host_build.build,
            self.identity.lcid,
            self.identity.hwid.hex().upper(),
            "on" if self.settings.ndr64 else "off",
            "on" if self.settings.btfn else "off",
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
