"""The authenticating gateway: logins grant single-use windows, within quotas, all audited."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from kmsgate.access.accounts import AccountBackend, BackendUnavailable
from kmsgate.access.nft import NftError, NftWindowSet, seconds_left
from kmsgate.catalog import Catalog
from kmsgate.observability.logs import split_peer
from kmsgate.protocol.session import ActivationRefused, ActivationServed, Event
from kmsgate.store.errors import StoreError
from kmsgate.store.gateway import AuditEvent, GatewayStore, QuotaUsage, Window

log = logging.getLogger("kmsgate.gateway")
Clock = Callable[[], datetime]
AUDIT_QUEUE = 10000


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class LoginOutcome:
    """What the portal tells the user: HTTP status, a message, and the window if granted."""

    status: int
    message: str
    window: Window | None = None
    usage: QuotaUsage | None = None
    quota_week: int | None = None
    quota_month: int | None = None

    @property
    def ok(self) -> bool:
        return self.window is not None


class AuditWriter:
    """A bounded queue of audit events flushed by one task, off the activation path."""

    def __init__(self, store: GatewayStore, max_queue: int = AUDIT_QUEUE) -> None:
        self._store = store
        self._queue: deque[AuditEvent] = deque()
        self._max = max_queue
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.dropped = 0

    def submit(self, event: AuditEvent) -> None:
        if len(self._queue) >= self._max:
            self.dropped += 1
            return
        self._queue.append(event)
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write everything queued; on a store error keep it for the next round."""
        async with self._lock:  # the task and close()/tests may flush at once
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        while self._queue:
            batch = list(self._queue)[:500]
            try:
                await self._store.add_audit(batch)
            except StoreError as exc:
                log.warning("audit trail not written yet (%d queued): %s", len(self._queue), exc)
                await asyncio.sleep(1.0)
                self._wake.set()
                return
            for _ in batch:
                self._queue.popleft()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()


class Gateway:
    """Grants windows at login, admits a connection by consuming its address's window."""

    def __init__(
        self,
        store: GatewayStore,
        backend: AccountBackend,
        catalog: Catalog,
        *,
        node: str,
        window: timedelta = timedelta(seconds=300),
        quota_week: int | None = None,
        quota_month: int | None = None,
        clock: Clock = _utc_now,
        nft: NftWindowSet | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.catalog = catalog
        self.node = node
        self.window = window
        self.quota_week = quota_week
        self.quota_month = quota_month
        self.clock = clock
        self.nft = nft
        self.audit = AuditWriter(store)
        self._admitted: dict[str, Window] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, sweep_every: float = 15.0) -> None:
        await self.audit.start()
        self._sweeper = asyncio.create_task(self._sweep_loop(sweep_every))

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.audit.close()
        await self.backend.close()

    def _event(self, kind: str, **fields: object) -> AuditEvent:
        return AuditEvent(time=self.clock(), kind=kind, node=self.node, **fields)  # type: ignore[arg-type]

    async def login(self, username: str, password: str, address: str) -> LoginOutcome:
        """Check the password, then the quota; on success open a window for `address`."""
        backend = self.backend.name
        try:
            result = await self.backend.authenticate(username, password)
        except BackendUnavailable as exc:
            self.audit.submit(
                self._event("login_failed", username=username[:256], address=address,
                            backend=backend, detail=f"account server unavailable: {exc.reason}")
            )  # fmt: skip
            return LoginOutcome(503, "The account server is unavailable; try again later.")
        if not result.ok:
            self.audit.submit(
                self._event("login_failed", username=username[:256], address=address,
                            backend=backend, detail=result.reason)
            )  # fmt: skip
            return LoginOutcome(401, "Wrong user name or password.")
        user = result.user
        now = self.clock()
        week, month = await self.store.get_quota(user)
        week = week if week is not None else self.quota_week
        month = month if month is not None else self.quota_month
        usage = await self.store.quota_usage(user, now)
        over = None
        if week is not None and usage.week_used >= week:
            over = ("weekly", week, usage.week_resets_at)
        elif month is not None and usage.month_used >= month:
            over = ("monthly", month, usage.month_resets_at)
        if over is not None:
            period, limit, resets = over
            when = f"{resets:%Y-%m-%d %H:%M} UTC" if resets else "later"
            message = f"Your {period} quota of {limit} activations is used up; it resets {when}."
            self.audit.submit(
                self._event("login_over_quota", username=user, address=address, backend=backend,
                            detail=message)
            )  # fmt: skip
            return LoginOutcome(403, message, None, usage, week, month)
        window = await self.store.grant_window(user, address, now, self.window)
        if self.nft is not None:
            try:
                await self.nft.allow(address, max(1, seconds_left(window.expires_at, now)))
            except (NftError, ValueError) as exc:
                # The kernel would drop the client anyway: say so rather than "activate now".
                log.error("window for %s not opened in nftables: %s", address, exc)
                return LoginOutcome(503, "The firewall could not be opened; try again later.")
        self.audit.submit(self._event("login_ok", username=user, address=address, backend=backend))
        self.audit.submit(
            self._event("window_granted", username=user, address=address, window_id=window.id,
                        detail=f"until {window.expires_at:%Y-%m-%dT%H:%M:%SZ}")
        )  # fmt: skip
        seconds = int(self.window.total_seconds())
        message = f"Activate within {seconds} seconds from {address}; the window serves once."
        return LoginOutcome(200, message, window, usage, week, month)

    async def admit(self, peer: str) -> Window | None:
        """Consume the window of the peer's address; None (audited) when there is none."""
        address, _ = split_peer(peer)
        try:
            window = await self.store.consume_window(address, self.clock(), self.node)
        except StoreError as exc:
            log.warning("%s refused: window store unavailable: %s", peer, exc)
            window = None
            detail = "window store unavailable"
        else:
            detail = "no open activation window"
        if window is None:
            self.audit.submit(self._event("connection_refused", address=address, detail=detail))
            return None
        self._admitted[peer] = window
        if self.nft is not None:
            # Single use in the kernel too; this connection goes on (ct state established).
            try:
                await self.nft.revoke(address)
            except (NftError, ValueError) as exc:
                log.warning("%s stays in nftables until its timeout: %s", address, exc)
        self.audit.submit(
            self._event("window_consumed", username=window.username, address=address,
                        window_id=window.id, detail=f"connection {peer}")
        )  # fmt: skip
        return window

    def forget(self, peer: str) -> None:
        """The admitted connection closed."""
        self._admitted.pop(peer, None)

    def hook(self, peer: str, event: Event) -> None:
        """KmsHost event hook: link each activation to the login that admitted it."""
        if not isinstance(event, ActivationServed | ActivationRefused):
            return
        window = self._admitted.get(peer)
        address, _ = split_peer(peer)
        request = event.request
        self.audit.submit(
            self._event(
                "activation",
                username=window.username if window else None,
                address=address,
                window_id=window.id if window else None,
                cmid=request.client_machine_id if request else None,
                machine_name=request.machine_name if request else None,
                product=self.catalog.product_name(request.sku_id, request.kms_counted_id)
                if request
                else None,
                result="activated" if isinstance(event, ActivationServed) else "refused",
                detail="" if isinstance(event, ActivationServed) else f"0x{event.hresult:08X}",
            )
        )

    async def sweep(self) -> list[Window]:
        """Note windows that expired unused (each once across nodes) in the audit trail."""
        expired = await self.store.expire_windows(self.clock())
        for window in expired:
            self.audit.submit(
                self._event("window_expired", username=window.username, address=window.address,
                            window_id=window.id)
            )  # fmt: skip
        return expired

    async def _sweep_loop(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.sweep()
            except StoreError as exc:
                log.warning("window sweep failed: %s", exc)
