"""The whole `kmsgate serve` process: store, write-behind recorder, KMS host and web listener."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from kmsgate.catalog import Catalog, default_catalog
from kmsgate.config import ServeSettings, parse_listen, parse_public_address
from kmsgate.observability.metrics import Metrics
from kmsgate.protocol.engine import filetime_from_unix
from kmsgate.server.fdlimit import raise_open_files_limit
from kmsgate.server.host import KmsHost
from kmsgate.server.selftest import run_self_test
from kmsgate.server.systemd import (
    drop_privileges,
    hand_over,
    protect_inherited_sockets,
    resolve_ids,
)

# The store (SQLAlchemy), the web stack (FastAPI, uvicorn), the gateway and DNS publishing are
# imported where they are started, so a node runs with only the memory its options need.
if TYPE_CHECKING:
    from kmsgate.access.gateway import Gateway
    from kmsgate.server.dns_task import DnsPublisher
    from kmsgate.server.recording import InlineRecordGate, RecordGate
    from kmsgate.server.seen_sync import SeenCountSync
    from kmsgate.server.web_listener import EmbeddedUvicorn
    from kmsgate.store.database import Store
    from kmsgate.store.writer import RecordWriter
    from kmsgate.store.writer_process import WriterProcess

log = logging.getLogger("kmsgate.server")
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
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
    return secret


def load_catalog(settings: ServeSettings) -> Catalog:
    """The catalogue `--catalog` names, else the built-in one; ValueError naming the file."""
    if settings.catalog is None:
        return default_catalog()
    return Catalog.from_file(settings.catalog)


class Service:
    """Starts and stops the parts of a node in the right order."""

    def __init__(self, settings: ServeSettings, *, catalog: Catalog | None = None) -> None:
        self.settings = settings
        self.catalog = catalog or load_catalog(settings)
        self.metrics = Metrics(self.catalog)
        self.store: Store | None = None
        self.writer: RecordWriter | WriterProcess | None = None
        self.host: KmsHost | None = None
        self.gateway: Gateway | None = None
        self._web: EmbeddedUvicorn | None = None
        self._web_task: asyncio.Task[None] | None = None
        self.dns_publisher: DnsPublisher | None = None
        self.seen_sync: SeenCountSync | None = None
        self._inline_gate: InlineRecordGate | None = None

    @property
    def web_port(self) -> int | None:
        """The bound web port (useful with port 0), or None without a web listener."""
        return self._web.port if self._web is not None else None

    async def start(self) -> None:
        """Open the store, start recording, listen for KMS clients, then serve the dashboard."""
        settings = self.settings
        # Before any child process starts: it must not inherit the listening sockets.
        protect_inherited_sockets()
        raise_open_files_limit()
        ids = None
        if settings.user is not None and os.geteuid() == 0:
            ids = resolve_ids(settings.user, settings.group)
        self.host = KmsHost(settings, catalog=self.catalog, metrics=self.metrics)
        if not settings.no_store:
            from kmsgate.server.recording import ActivationRecorder
            from kmsgate.store.database import Store

            self.store = await Store.open(settings.db_url, upgrade=settings.db_upgrade)
            path = settings.db_path
            log.info("store %s", f"{path} (SQLite)" if path is not None else self.store.url)
            if ids is not None:
                # The writer process makes itself the service user before it opens these.
                hand_over(settings.data_dir, *ids)
            writer, gate = self._make_writer(self.store, ids)
            self.writer = writer
            # Running before the host listens: an answer given is a record that can be kept.
            await writer.start()
            self.metrics.set_store_source(
                lambda: (writer.depth, writer.dropped, writer.written, writer.failures)
            )
            self.host.event_hooks.append(ActivationRecorder(gate.submit, self.catalog))
            # Answers wait until their records are handed over (see recording.RecordGate).
            self.host.record_gate = gate
            if settings.gateway:
                await self._start_gateway(self.store)
            seen = self.host.engine.seen_clients
            if seen is not None:
                from kmsgate.server.seen_sync import SeenCountSync
                from kmsgate.store.seen import SeenMachines

                # Loaded before the host listens: the first answers already count history.
                self.seen_sync = SeenCountSync(seen, SeenMachines(self.store))
                await self.seen_sync.start()
        await self.host.start()
        if self.store is not None and not settings.no_web:
            await self._start_web()
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
            self.dns_publisher = DnsPublisher(settings)
            await self.dns_publisher.start()

    def _make_writer(
        self, store: Store, ids: tuple[int, int] | None
    ) -> tuple[RecordWriter | WriterProcess, RecordGate]:
        """The record writer --store-writer asks for, and the gate the host hands drafts to."""
        settings = self.settings
        if settings.store_writer == "process":
            from kmsgate.store.writer_process import WriterProcess

            process = WriterProcess(
                settings.db_url,
                node=settings.node_name,
                max_queue=settings.store_queue,
                flush_interval=settings.store_flush_interval,
                run_as=ids,
                retention_days=settings.retention_days,
            )
            return process, process
        from kmsgate.server.recording import InlineRecordGate
        from kmsgate.store.retention import Retention
        from kmsgate.store.writer import RecordWriter

        days = settings.retention_days
        inline = RecordWriter(
            store,
            max_queue=settings.store_queue,
            flush_interval=settings.store_flush_interval,
            retention=Retention(store, days) if days else None,
        )
        self._inline_gate = InlineRecordGate(
            inline, node=settings.node_name, max_queue=settings.store_queue
        )
        return inline, self._inline_gate

    def reload(self, settings: ServeSettings) -> None:
        """Apply what can change without dropping connections: policies, quotas, windows."""
        assert self.host is not None
        self.host.apply_policies(settings)
        if self.gateway is not None:
            self.gateway.window = timedelta(seconds=settings.window)
            self.gateway.quota_week = settings.quota_week
            self.gateway.quota_month = settings.quota_month
        from kmsgate.store.writer_process import WriterProcess

        if isinstance(self.writer, WriterProcess):  # its child logs at the reloaded level too
            self.writer.set_log_level(logging.getLogger("kmsgate").getEffectiveLevel())
        self.settings = settings

    async def _start_gateway(self, store: Store) -> None:
        from kmsgate.access.accounts import build_backend
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
        await self.gateway.start()
        assert self.host is not None
        self.host.gateway = self.gateway
        self.host.event_hooks.append(self.gateway.hook)
        log.info(
            "gateway mode: %s accounts, %d s windows", settings.accounts.backend, settings.window
        )

    async def _start_web(self) -> None:
        from kmsgate.server.web_listener import start_web_listener
        from kmsgate.web.app import create_app
        from kmsgate.web.health import StoreHealth
        from kmsgate.web.pages import KmsAddress

        assert self.store is not None and self.host is not None
        settings = self.settings
        public_host, public_port = (
            parse_public_address(settings.public_address)
            if settings.public_address
            else (None, None)
        )
        app = create_app(
            self.store,
            catalog=self.catalog,
            metrics_registry=self.metrics.registry,
            secret_key=load_web_secret(settings.data_dir),
            # Secure cookies only make sense when the browser reaches us over HTTPS.
            secure_cookies=settings.web_cert is not None,
            node_name=settings.node_name,
            gateway=self.gateway,
            trust_proxy=[ipaddress.ip_network(cidr, strict=False) for cidr in settings.trust_proxy],
            kms_address=KmsAddress(public_host, public_port or self.host.port),
            store_health=StoreHealth(self.writer) if self.writer is not None else None,
        )
        host, port = parse_listen(settings.web)
        self._web, self._web_task = await start_web_listener(
            app,
            host,
            port,
            cert=str(settings.web_cert) if settings.web_cert else None,
            key=str(settings.web_key) if settings.web_key else None,
            max_connections=settings.web_max_connections,
            request_timeout=settings.web_request_timeout,
        )
        scheme = "https" if settings.web_cert else "http"
        shown = f"[{host}]" if ":" in host else host
        log.info("web dashboard on %s://%s:%d/", scheme, shown, self.web_port)
        if not await self.store.has_admin():
            log.warning(
                "no administrator account yet: create one with `kmsgate users add NAME --admin` "
                "(with this server's --config, --db or --data-dir) to log in to the dashboard"
            )

    async def stop(self) -> None:
        """Stop accepting, drain connections, flush queued records, close the store."""
        if self.dns_publisher is not None:
            # Withdraw the SRV record first, so clients stop being sent here.
            await self.dns_publisher.stop(unpublish=True)
            self.dns_publisher = None
        if self.host is not None:
            await self.host.stop()
        if self.seen_sync is not None:
            await self.seen_sync.stop()
            self.seen_sync = None
        if self.gateway is not None:
            await self.gateway.close()
        if self._web is not None and self._web_task is not None:
            self._web.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._web_task
        if self._inline_gate is not None:
            self._inline_gate.close()
        if self.writer is not None:
            await self.writer.close()
            if self.writer.dropped:
                log.warning("%d records were dropped while the store lagged", self.writer.dropped)
        if self.store is not None:
            await self.store.close()

    async def __aenter__(self) -> Service:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
