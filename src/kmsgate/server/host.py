"""The KMS host: its engine and sessions, its listeners, its events, and shutdown."""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import random
import socket
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Protocol

from kmsgate import _native
from kmsgate.access.products import ProductPolicy
from kmsgate.catalog import Catalog, default_catalog
from kmsgate.config.settings import ServeSettings
from kmsgate.net import Peer
from kmsgate.observability.activation_log import log_activation
from kmsgate.observability.log_budget import LogBudget
from kmsgate.observability.metrics import Metrics
from kmsgate.protocol import crypto, wire
from kmsgate.protocol.counting import SeenClients
from kmsgate.protocol.engine import EngineConfig, KmsEngine
from kmsgate.protocol.events import (
    ActivationRefused,
    ActivationServed,
    ConnectionClosed,
    Event,
    FaultSent,
)
from kmsgate.protocol.session import RequestPolicy, ServerSession, SessionSettings
from kmsgate.server.busy_poll import BusyPoll
from kmsgate.server.connection import KmsConnection
from kmsgate.server.identity import HostIdentity, build_identity
from kmsgate.server.limits import ConnectionLimits
from kmsgate.server.outbox import AnswerOutbox
from kmsgate.server.random_source import BufferedRandom
from kmsgate.systemd import inherited_sockets

if TYPE_CHECKING:
    from kmsgate.access.gateway import Gateway
    from kmsgate.recording.recorder import RecordGate

log: Final = logging.getLogger("kmsgate.server")
# Fault and protocol-close lines written per second at most (the rest are counted).
NOISY_LINES_PER_SECOND: Final = 50

EventHook = Callable[[Peer, Event], None]


class Listener(Protocol):
    """An asyncio or uvloop server: uvloop's `sockets` is a list where typeshed says tuple,
    and this module's compiled build checks the declared types it reads."""

    @property
    def sockets(self) -> Sequence[socket.socket]: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class KmsHost(ConnectionLimits):
    """A KMS host serving one settings model on one or more listeners."""

    def __init__(
        self,
        settings: ServeSettings,
        *,
        catalog: Catalog | None = None,
        rng: random.Random | None = None,
        random_bytes: Callable[[int], bytes] | None = None,
        today: datetime | None = None,
        metrics: Metrics | None = None,
        identity: HostIdentity | None = None,
        seen_clients: SeenClients | None = None,
    ) -> None:
        self.catalog = catalog or default_catalog()
        self._rng = rng or random.SystemRandom()
        # Association group ids name a connection's context, they guard nothing: a PRNG
        # seeded once spares each connection a getrandom() call (1 µs, and a GIL release).
        if random_bytes is None:
            random_bytes = BufferedRandom()
        self._group_ids = rng or random.Random(random_bytes(32))
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
        super().__init__(settings, metrics or Metrics(self.catalog))
        self.event_hooks: list[EventHook] = [self.metrics.hook]
        self.record_gate: RecordGate | None = None
        self.gateway: Gateway | None = None
        self.busy_poll: BusyPoll | None = None
        self._servers: list[Listener] = []
        self._session_settings: dict[int, SessionSettings] = {}
        # Faults and protocol closes are the client's to cause: their lines have a budget.
        self._noisy_lines = LogBudget(NOISY_LINES_PER_SECOND)
        # Named in every activation's log line: read once, as the limits are (a restart
        # changes it, a reload does not).
        self.node_name = settings.node_name

    def apply_policies(self, settings: ServeSettings) -> None:
        """Swap source and product policies in place (SIGHUP); open connections keep going."""
        self.set_source_policy(settings)
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
            assoc_group_id=self._group_ids.getrandbits(32),
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
                log_activation(peer, event, self.catalog, self.node_name)
            elif isinstance(event, ActivationRefused):
                stats.refusals += 1
                log_activation(peer, event, self.catalog, self.node_name)
            elif isinstance(event, FaultSent):
                stats.faults += 1
                if self._noisy_lines.allow():
                    log.info("%s fault 0x%08X: %s%s", peer, event.status, event.reason,
                             self._suppressed())  # fmt: skip
            elif isinstance(event, ConnectionClosed):
                stats.protocol_closes += 1
                if self._noisy_lines.allow():
                    log.info("%s closed: %s%s", peer, event.reason, self._suppressed())
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

    def _suppressed(self) -> str:
        count = self._noisy_lines.take_suppressed()
        if not count:
            return ""
        return f" ({count} more fault and close lines not written: over {NOISY_LINES_PER_SECOND}/s)"

    def activity(self) -> int:
        """Connections accepted and requests answered so far: what busy polling waits on."""
        stats = self.stats
        return stats.connections_accepted + stats.activations + stats.refusals

    async def start(self, relay: Callable[[], asyncio.Protocol] | None = None) -> None:
        """Open every listener; the default IPv6 one is skipped where IPv6 is unavailable.

        In relay mode (`--upstream`) the caller passes the relay's protocol factory.
        """
        loop = self.loop = asyncio.get_running_loop()
        self.outbox = AnswerOutbox(loop)
        busy_poll = self.busy_poll = BusyPoll(loop, self.settings.busy_poll / 1e6, self.activity)
        if busy_poll.budget > 0:
            self.outbox.on_sent = busy_poll.kick
        upstream = self.settings.upstream_address
        if (upstream is None) != (relay is None):
            # relay.py builds on this module, so the host cannot build the relay itself.
            raise ValueError("a relay factory is given exactly when an upstream is set")

        def factory(port: int) -> Callable[[], asyncio.Protocol]:
            # A listener's port is the bind_ack's secondary address; passed here, so a
            # connection need not ask its socket (a getsockname() call per connection).
            return relay or functools.partial(KmsConnection, self, port or None)

        for sock in inherited_sockets():
            port = sock.getsockname()[1] if sock.family in (socket.AF_INET, socket.AF_INET6) else 0
            server = await loop.create_server(factory(port), sock=sock, backlog=1024)
            self._servers.append(server)
        for host, port in [] if self._servers else self.settings.listen_addresses:
            try:
                server = await loop.create_server(
                    factory(port), host, port, reuse_address=True, backlog=1024
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
        log.info("wire layout: %s", wire.WIRE_BACKEND)
        log.info("hot path: %s", _native.NATIVE_STATUS)
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
