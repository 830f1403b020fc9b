"""The whole `kmsgate serve` node: store, recording, KMS host or relay, web listener, DNS."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from kmsgate.access.source import parse_network
from kmsgate.catalog import Catalog
from kmsgate.catalog.loading import load_catalog
from kmsgate.config.addresses import parse_listen, parse_public_address
from kmsgate.config.settings import ServeSettings
from kmsgate.file_modes import PRIVATE_FOLDER
from kmsgate.heap import freeze_startup_heap
from kmsgate.net import Peer
from kmsgate.observability.metrics import Metrics
from kmsgate.protocol.engine import filetime_from_unix
from kmsgate.server.fdlimit import raise_open_files_limit
from kmsgate.server.host import KmsHost
from kmsgate.server.selftest import run_self_test
from kmsgate.systemd import (
    drop_privileges,
    hand_over,
    notify_socket,
    protect_inherited_sockets,
    resolve_ids,
    sd_notify,
    watchdog_interval,
    watchdog_pings,
)

# The store (SQLAlchemy), the web stack (FastAPI, uvicorn), the gateway and DNS publishing are
# imported where they are started, so a node runs with only the memory its options need.
if TYPE_CHECKING:
    from kmsgate.access.gateway import Gateway
    from kmsgate.recording.inline import InlineWriter
    from kmsgate.recording.process import WriterProcess
    from kmsgate.recording.recorder import RecordGate
    from kmsgate.server.dns_task import DnsPublisher
    from kmsgate.server.seen_sync import SeenCountSync
    from kmsgate.server.web_listener import EmbeddedUvicorn
    from kmsgate.store.database import Store

log = logging.getLogger("kmsgate.server")
RING_FILE = "records.ring"
SESSION_KEY_FILE = "web-secret.key"


def load_web_secret(data_dir: Path) -> bytes:
    """The dashboard's cookie-signing key, created once (mode 0600) so sessions survive restarts."""
    path = data_dir / SESSION_KEY_FILE
    try:
        secret = path.read_bytes()
        if len(secret) >= 32:
            return secret
    except FileNotFoundError:
        pass
    data_dir.mkdir(mode=PRIVATE_FOLDER, parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
    return secret


class Node:
    """Starts the parts of a node in order and stops them in the reverse order."""

    def __init__(self, settings: ServeSettings, *, catalog: Catalog | None = None) -> None:
        self.settings = settings
        self.catalog = catalog or load_catalog(settings.catalog)
        self.metrics = Metrics(self.catalog)
        self.store: Store | None = None
        self.writer: InlineWriter | WriterProcess | None = None
        self.host: KmsHost | None = None
        self.gateway: Gateway | None = None
        self._web: EmbeddedUvicorn | None = None
        self.dns_publisher: DnsPublisher | None = None
        self.seen_sync: SeenCountSync | None = None
        # Each part pushes its own shutdown just before it starts (a part that failed to
        # start may hold something already): a failed start and stop() both undo what was
        # started, last started first.
        self._parts = contextlib.AsyncExitStack()

    @property
    def web_port(self) -> int | None:
        """The bound web port (useful with port 0), or None without a web listener."""
        return self._web.port if self._web is not None else None

    async def start(self) -> None:
        """Open the store, start recording, listen for KMS clients, then serve the dashboard."""
        try:
            await self._start(self._parts)
        except BaseException:
            await self.stop()
            raise

    async def _start(self, parts: contextlib.AsyncExitStack) -> None:
        settings = self.settings
        # Before any child process starts: it must not inherit the listening sockets.
        protect_inherited_sockets()
        raise_open_files_limit()
        ids = None
        if settings.user is not None and os.geteuid() == 0:
            ids = resolve_ids(settings.user, settings.group)
        host = self.host = KmsHost(settings, catalog=self.catalog, metrics=self.metrics)
        if not settings.no_store:
            from kmsgate.recording.recorder import ActivationRecorder
            from kmsgate.store.database import Store

            store = self.store = await Store.open(settings.db_url, upgrade=settings.db_upgrade)
            parts.push_async_callback(store.close)
            path = settings.db_path
            if path is not None:
                from kmsgate.store.activation_batch import describe_sqlite_writer

                log.info("store %s (SQLite; %s)", path, describe_sqlite_writer())
            else:
                log.info("store %s", store.url)
            if ids is not None:
                # The writer process makes itself the service user before it opens these.
                hand_over(settings.data_dir, *ids)
            writer, gate = self._make_writer(store, ids)
            self.writer = writer
            # Running before the host listens: an answer given is a record that can be kept.
            parts.push_async_callback(self._close_writer, writer)
            await writer.start()
            self.metrics.set_store_source(
                lambda: (writer.depth, writer.dropped, writer.written, writer.failures)
            )
            host.event_hooks.append(
                ActivationRecorder(gate.submit, self.catalog, node=settings.node_name)
            )
            # Answers wait until their records are handed over (see recorder.RecordGate).
            host.record_gate = gate
            if settings.gateway:
                await self._start_gateway(store, parts)
            seen = host.engine.seen_clients
            if seen is not None:
                from kmsgate.server.seen_sync import SeenCountSync
                from kmsgate.store.seen import SeenMachines

                # Loaded before the host listens: the first answers already count history.
                seen_sync = self.seen_sync = SeenCountSync(seen, SeenMachines(store))
                parts.push_async_callback(seen_sync.stop)
                await seen_sync.start()
        upstream = settings.upstream_address
        parts.push_async_callback(host.stop)
        if upstream is None:
            await host.start()
        else:
            from kmsgate.server.relay import relay_factory

            await host.start(relay_factory(host, upstream))
        if self.store is not None and not settings.no_web:
            await self._start_web(self.store, host, parts)
        # Proves the protocol core works here, and imports what the hot path needs.
        run_self_test(filetime_from_unix(time.time()))
        if ids is not None:
            # Every listener is bound (port 1688 and maybe 443 need root); from here on we
            # run as the unprivileged user, whose files the data directory now holds.
            hand_over(settings.data_dir, *ids)
            drop_privileges(*ids)
        if settings.dns_publish:
            from kmsgate.server.dns_task import DnsPublisher

            # Announce the host only once it listens; failures are logged and retried.
            publisher = self.dns_publisher = DnsPublisher(settings)
            # Stopped first: withdraw the SRV record, so clients stop being sent here.
            parts.push_async_callback(publisher.stop, unpublish=True)
            await publisher.start()

    @staticmethod
    async def _close_writer(writer: InlineWriter | WriterProcess) -> None:
        await writer.close()
        if writer.dropped:
            log.warning("%d records were dropped while the store lagged", writer.dropped)

    def _make_writer(
        self, store: Store, ids: tuple[int, int] | None
    ) -> tuple[InlineWriter | WriterProcess, RecordGate]:
        """The record writer --store-writer asks for, and the gate the host hands drafts to."""
        settings = self.settings
        # In the data directory: what was handed over outlives every process of the node.
        ring_path = settings.data_dir / RING_FILE
        if settings.store_writer == "process":
            from kmsgate.recording.process import WriterProcess

            process = WriterProcess(
                settings.db_url,
                node=settings.node_name,
                max_queue=settings.store_queue,
                flush_interval=settings.store_flush_interval,
                run_as=ids,
                retention_days=settings.retention_days,
                ring_path=ring_path,
            )
            return process, process
        from kmsgate.recording.inline import InlineWriter
        from kmsgate.store.retention import Retention

        days = settings.retention_days
        inline = InlineWriter(
            store,
            node=settings.node_name,
            max_queue=settings.store_queue,
            flush_interval=settings.store_flush_interval,
            retention=Retention(store, days) if days else None,
            ring_path=ring_path,
        )
        return inline, inline

    def reload(self, settings: ServeSettings) -> None:
        """Apply what can change without dropping connections: policies, quotas, windows."""
        assert self.host is not None
        self.host.apply_policies(settings)
        if self.gateway is not None:
            self.gateway.window = timedelta(seconds=settings.window)
            self.gateway.quota_week = settings.quota_week
            self.gateway.quota_month = settings.quota_month
        from kmsgate.recording.process import WriterProcess

        if isinstance(self.writer, WriterProcess):  # its child logs at the reloaded level too
            self.writer.set_log_level(logging.getLogger("kmsgate").getEffectiveLevel())
        self.settings = settings

    async def _start_gateway(self, store: Store, parts: contextlib.AsyncExitStack) -> None:
        from kmsgate.access.accounts.backends import build_backend
        from kmsgate.access.gateway import Gateway
        from kmsgate.access.nft import NftWindowSet
        from kmsgate.store.gateway import GatewayStore

        settings = self.settings
        nft = None
        if settings.nft:
            # Clients connect to this node, so the input hook; the table stays on stop, so
            # the port fails closed. A failure here (no nft, no CAP_NET_ADMIN) stops startup.
            nft = NftWindowSet(settings.nft_table, port=settings.nft_port, hooks=("input",))
            await nft.ensure()
        self.gateway = Gateway(
            GatewayStore(store),
            build_backend(settings.accounts, store=store),
            self.catalog,
            node=settings.node_name,
            window=timedelta(seconds=settings.window),
            quota_week=settings.quota_week,
            quota_month=settings.quota_month,
            nft=nft,
            metrics=self.metrics,
        )
        parts.push_async_callback(self.gateway.close)
        await self.gateway.start()
        assert self.host is not None
        self.host.gateway = self.gateway
        self.host.event_hooks.append(self.gateway.hook)
        log.info(
            "gateway mode: %s accounts, %d s windows", settings.accounts.backend, settings.window
        )

    async def _start_web(
        self, store: Store, kms_host: KmsHost, parts: contextlib.AsyncExitStack
    ) -> None:
        from kmsgate.server.web_listener import start_web_listener
        from kmsgate.web.app import create_app
        from kmsgate.web.health import StoreHealth
        from kmsgate.web.portal_login import KmsAddress

        settings = self.settings
        public_host, public_port = (
            parse_public_address(settings.public_address)
            if settings.public_address
            else (None, None)
        )
        app = create_app(
            store,
            catalog=self.catalog,
            metrics_registry=self.metrics.registry,
            secret_key=load_web_secret(settings.data_dir),
            # Secure cookies only make sense when the browser reaches us over HTTPS.
            secure_cookies=settings.web_cert is not None,
            node_name=settings.node_name,
            gateway=self.gateway,
            trust_proxy=[parse_network(cidr) for cidr in settings.trust_proxy],
            kms_address=KmsAddress(public_host, public_port or kms_host.port),
            store_health=StoreHealth(self.writer) if self.writer is not None else None,
        )
        host, port = parse_listen(settings.web)
        # Asked before listening, so the hint is in the log before the first page is served.
        needs_admin = not await store.has_admin()
        web, task = await start_web_listener(
            app,
            host,
            port,
            cert=str(settings.web_cert) if settings.web_cert else None,
            key=str(settings.web_key) if settings.web_key else None,
            max_connections=settings.web_max_connections,
            request_timeout=settings.web_request_timeout,
        )
        self._web = web
        parts.push_async_callback(self._stop_web, web, task)
        scheme = "https" if settings.web_cert else "http"
        shown = f"[{host}]" if ":" in host else host
        log.info("web dashboard on %s://%s:%d/", scheme, shown, web.port)
        if needs_admin:
            log.warning(
                "no administrator account yet: create one with `kmsgate users add NAME --admin` "
                "(with this server's --config, --db or --data-dir) to log in to the dashboard"
            )

    @staticmethod
    async def _stop_web(web: EmbeddedUvicorn, task: asyncio.Task[None]) -> None:
        web.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def stop(self) -> None:
        """Withdraw the DNS record, stop the web, drain connections, flush records, close."""
        await self._parts.aclose()

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


async def run_node(settings: ServeSettings, reload: Callable[[], ServeSettings | None]) -> None:
    """Serve until SIGINT/SIGTERM, then drain and flush; on SIGHUP apply what `reload` reads.

    systemd (Type=notify) hears READY once everything listens, STOPPING when draining, and
    watchdog pings from the event loop in between.
    """
    node = Node(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)

    def on_sighup() -> None:
        reloaded = reload()
        if reloaded is not None:
            node.reload(reloaded)
            log.info("settings reloaded")

    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    notify = notify_socket()
    watchdog: asyncio.Task[None] | None = None
    try:
        async with node:
            assert node.host is not None
            # Everything this process keeps is loaded: full collections stop walking it.
            log.debug("startup heap frozen: %d objects", freeze_startup_heap())
            # Listeners bound, privileges dropped, store and web up: systemd may go on.
            addresses = ", ".join(str(Peer(host, port)) for host, port in node.host.addresses)
            sd_notify(notify, "READY=1", f"STATUS=serving KMS on {addresses}")
            interval = watchdog_interval()
            if interval is not None:
                watchdog = asyncio.create_task(watchdog_pings(notify, interval))
            await stop.wait()
            sd_notify(notify, "STOPPING=1", "STATUS=stopping: draining connections")
            log.info("stopping: draining %d connections", len(node.host.connections))
    finally:
        # Pings go on while draining and flushing, which TimeoutStopSec bounds instead.
        if watchdog is not None:
            watchdog.cancel()
    stats = node.host.stats
    log.info("stopped after %d activations, %d refusals", stats.activations, stats.refusals)
