"""The authenticating gateway: logins grant single-use windows, within quotas, all audited."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from kmsgate.access.accounts.base import AccountBackend, BackendUnavailable
from kmsgate.access.nft import NftError, NftWindowSet, seconds_left
from kmsgate.catalog import Catalog
from kmsgate.net import Peer, canonical_address
from kmsgate.protocol.engine import filetime_from_unix
from kmsgate.protocol.events import ActivationRefused, ActivationServed, Event
from kmsgate.protocol.hresult import HResult
from kmsgate.protocol.messages import KmsRequest
from kmsgate.protocol.session import PolicyRefusal
from kmsgate.store.audit import AuditEvent
from kmsgate.store.errors import StoreError
from kmsgate.store.gateway import GatewayStore, QuotaUsage, Window

if TYPE_CHECKING:
    from kmsgate.observability.metrics import Metrics

log = logging.getLogger("kmsgate.gateway")
Clock = Callable[[], datetime]
AUDIT_QUEUE = 10000
# Refused connections are audited as one row per source address and minute; this many
# sources wait for their minute to end at most, the rest share one "other sources" row.
MAX_REFUSAL_SOURCES = 1024
REFUSAL_FLUSH_EVERY = 5.0
# A served activation's spend, or a release, is retried this often before it is given up.
WINDOW_UPDATE_TRIES = 5
# 0xC004F042, "the specified KMS cannot be used": what a genuine host answers a request it
# will not serve. Clients report it and retry later on their own schedule; there is no
# "try another machine id" answer, and RPC-level errors would make them retry at once.
REFUSED_BY_WINDOW = HResult.PRODUCT_NOT_ALLOWED


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


class WindowRequestPolicy:
    """An admitted connection's request policy: one client machine, nothing after the end.

    The first request's client machine id binds the connection; the same machine's other
    products (Windows and each Office KMS id) are served, another machine's requests refused.
    """

    __slots__ = ("ends", "machine")

    def __init__(self, expires_at: datetime) -> None:
        self.ends = filetime_from_unix(expires_at.timestamp())
        self.machine: uuid.UUID | None = None

    def __call__(self, request: KmsRequest, now: int) -> PolicyRefusal | None:
        if now >= self.ends:
            return PolicyRefusal(REFUSED_BY_WINDOW, "the activation window has ended")
        if self.machine is None:
            self.machine = request.client_machine_id
        elif request.client_machine_id != self.machine:
            return PolicyRefusal(
                REFUSED_BY_WINDOW, f"the window serves client machine {self.machine} only"
            )
        return None


@dataclass(slots=True)
class Admission:
    """A connection that took a window: its request policy, and whether it was served."""

    window: Window
    policy: WindowRequestPolicy
    served: bool = False

    def seconds_left(self, now: datetime) -> float:
        """Time until the window ends (0 when it has)."""
        return max(0.0, (self.window.expires_at - now).total_seconds())


@dataclass(slots=True)
class _Tally:
    count: int
    first: datetime


TallyKey = tuple[str | None, datetime, str]


class RefusalTally:
    """Refused connections counted per (source, minute, reason), in bounded memory."""

    OTHER = None  # the address of the row gathering sources beyond the cap

    def __init__(self, max_sources: int = MAX_REFUSAL_SOURCES) -> None:
        self._max = max_sources
        self._counts: dict[TallyKey, _Tally] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def add(self, address: str, detail: str, now: datetime) -> None:
        minute = now.replace(second=0, microsecond=0)
        key: TallyKey = (address, minute, detail)
        entry = self._counts.get(key)
        if entry is None:
            if len(self._counts) >= self._max:
                key = (self.OTHER, minute, detail)
                entry = self._counts.get(key)
            if entry is None:
                entry = self._counts[key] = _Tally(0, now)
        entry.count += 1

    def take(self, node: str, before: datetime | None = None) -> list[AuditEvent]:
        """Rows of the minutes that began before `before` (all when None), removed from here."""
        limit = None if before is None else before.replace(second=0, microsecond=0)
        rows = []
        for key in [k for k in self._counts if limit is None or k[1] < limit]:
            address, minute, detail = key
            tally = self._counts.pop(key)
            count = tally.count
            sources = (
                "this source" if address is not None else f"sources beyond the first {self._max}"
            )
            rows.append(
                AuditEvent(
                    time=tally.first,
                    kind="connection_refused",
                    node=node,
                    address=address,
                    detail=f"{detail}: {count} connection(s) from {sources} "
                    f"in the minute from {minute:%H:%M} UTC",
                    count=count,
                )
            )
        return rows


class AuditWriter:
    """A bounded queue of audit events flushed by one task, off the activation path."""

    def __init__(
        self,
        store: GatewayStore,
        max_queue: int = AUDIT_QUEUE,
        *,
        node: str = "",
        clock: Clock = _utc_now,
        max_refusal_sources: int = MAX_REFUSAL_SOURCES,
    ) -> None:
        self._store = store
        self._queue: deque[AuditEvent] = deque()
        self._max = max_queue
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._node = node
        self._clock = clock
        self.refusals = RefusalTally(max_refusal_sources)
        self.dropped = 0

    def submit(self, event: AuditEvent) -> None:
        if len(self._queue) >= self._max:
            self.dropped += 1
            return
        self._queue.append(event)
        self._wake.set()

    def count_refusal(self, address: str, detail: str) -> None:
        """A refused connection: audited with the others of its source and minute."""
        self.refusals.add(address, detail, self._clock())

    async def start(self, refusal_flush_every: float = REFUSAL_FLUSH_EVERY) -> None:
        self._task = asyncio.create_task(self._run())
        self._ticker = asyncio.create_task(self._tick(refusal_flush_every))

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush(complete_minutes_only=True)

    async def _tick(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            if self.refusals:
                self._wake.set()

    async def flush(self, *, complete_minutes_only: bool = False) -> None:
        """Write everything queued (and the refusal counts); on a store error keep it."""
        async with self._lock:  # the task and close()/tests may flush at once
            before = self._clock() if complete_minutes_only else None
            for row in self.refusals.take(self._node, before):
                self.submit(row)
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
        for task in (self._task, self._ticker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.flush()


class BackendHealth:
    """Whether the account server answers: a WARNING once per outage, an INFO when it is back."""

    def __init__(self, backend: str, metrics: Metrics | None = None) -> None:
        self.backend = backend
        self.up: bool | None = None  # unknown until the first login asks it
        self._metrics = metrics

    def answered(self) -> None:
        if self.up is False:
            log.info("%s account server answers again", self.backend)
        self._set(True)

    def unavailable(self, reason: str) -> None:
        if self.up is not False:
            log.warning(
                "%s account server unavailable: %s (portal logins answer 503 until it is back)",
                self.backend,
                reason,
            )
        self._set(False)

    def _set(self, up: bool) -> None:
        self.up = up
        if self._metrics is not None:
            self._metrics.set_account_backend_up(self.backend, up)


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
        metrics: Metrics | None = None,
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
        self.audit = AuditWriter(store, node=node, clock=clock)
        self.backend_health = BackendHealth(backend.name, metrics)
        self._admitted: dict[Peer, Admission] = {}
        self._updates: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, sweep_every: float = 15.0) -> None:
        await self.audit.start()
        self._sweeper = asyncio.create_task(self._sweep_loop(sweep_every))

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        # Spends and releases of connections that just ended, before the trail is flushed.
        await self.settle()
        await self.audit.close()
        await self.backend.close()

    async def settle(self) -> None:
        """Wait for the window updates (spent, released) already started."""
        while self._updates:
            await asyncio.gather(*list(self._updates), return_exceptions=True)

    def _event(self, kind: str, **fields: object) -> AuditEvent:
        return AuditEvent(time=self.clock(), kind=kind, node=self.node, **fields)  # type: ignore[arg-type]

    async def login(self, username: str, password: str, address: str) -> LoginOutcome:
        """Check the password, then the quota; on success open a window for `address`."""
        address = canonical_address(address)
        backend = self.backend.name
        try:
            result = await self.backend.authenticate(username, password, client_address=address)
        except BackendUnavailable as exc:
            self.backend_health.unavailable(exc.reason)
            self.audit.submit(
                self._event("login_failed", username=username[:256], address=address,
                            backend=backend, detail=f"account server unavailable: {exc.reason}")
            )  # fmt: skip
            return LoginOutcome(503, "The account server is unavailable; try again later.")
        self.backend_health.answered()
        if not result.ok:
            self.audit.submit(
                self._event("login_failed", username=username[:256], address=address,
                            backend=backend, detail=result.reason)
            )  # fmt: skip
            return LoginOutcome(401, "Wrong user name or password.")
        user = result.user
        now = self.clock()
        grant = await self.store.grant_within_quota(
            user, address, now, self.window, quota_week=self.quota_week,
            quota_month=self.quota_month,
        )  # fmt: skip
        usage, week, month = grant.usage, grant.quota_week, grant.quota_month
        window = grant.window
        if window is None:
            message = _over_quota_message(grant.over or "weekly", week, month, usage)
            self.audit.submit(
                self._event("login_over_quota", username=user, address=address, backend=backend,
                            detail=message)
            )  # fmt: skip
            return LoginOutcome(403, message, None, usage, week, month)
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
        message = (
            f"Activate within {seconds} seconds from {address}; the window serves one "
            "connection of one machine."
        )
        return LoginOutcome(200, message, window, usage, week, month)

    async def admit(self, peer: Peer) -> Admission | None:
        """Consume the window of the peer's address; None (audited) when there is none."""
        address = peer.address
        try:
            window = await self.store.consume_window(address, self.clock(), self.node)
        except StoreError as exc:
            log.warning("%s refused: window store unavailable: %s", peer, exc)
            window = None
            detail = "window store unavailable"
        else:
            detail = "no open activation window"
        if window is None:
            self.audit.count_refusal(address, detail)
            return None
        admission = Admission(window, WindowRequestPolicy(window.expires_at))
        self._admitted[peer] = admission
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
        return admission

    def forget(self, peer: Peer, reason: str = "") -> None:
        """The admitted connection closed: without a served activation, release its window."""
        admission = self._admitted.pop(peer, None)
        if admission is None or admission.served:
            return
        why = reason or "the connection closed without a served activation"
        self._update(lambda: self._release(admission.window, why))

    def hook(self, peer: Peer, event: Event) -> None:
        """KmsHost event hook: link each activation to the login that admitted it."""
        if not isinstance(event, ActivationServed | ActivationRefused):
            return
        admission = self._admitted.get(peer)
        window = admission.window if admission is not None else None
        address = peer.address
        request = event.request
        if isinstance(event, ActivationServed):
            detail = ""
            if admission is not None and not admission.served:
                admission.served = True
                served_at = self.clock()
                self._update(lambda: self._spend(admission.window, served_at))
        else:
            detail = f"0x{event.hresult:08X}: {event.reason}"
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
                detail=detail,
            )
        )

    def _update(self, make: Callable[[], Awaitable[None]]) -> None:
        """Run a window update off the event hook, retried on store errors, awaited at close."""

        async def run() -> None:
            for attempt in range(WINDOW_UPDATE_TRIES):
                try:
                    await make()
                except StoreError as exc:
                    if attempt == WINDOW_UPDATE_TRIES - 1:
                        log.error("window update given up: %s", exc)
                        return
                    await asyncio.sleep(0.5 * 2**attempt)
                else:
                    return

        task = asyncio.get_running_loop().create_task(run())
        self._updates.add(task)
        task.add_done_callback(self._updates.discard)

    async def _spend(self, window: Window, at: datetime) -> None:
        await self.store.spend_window(window.id, at)

    async def _release(self, window: Window, why: str) -> None:
        now = self.clock()
        released = await self.store.release_window(window.id, now)
        if released is None:
            return
        if released.expires_at > now:
            outcome = f"open again until {released.expires_at:%Y-%m-%dT%H:%M:%SZ}"
            if self.nft is not None:
                try:
                    await self.nft.allow(
                        released.address, max(1, seconds_left(released.expires_at, now))
                    )
                except (NftError, ValueError) as exc:
                    log.warning("%s not let in again by nftables: %s", released.address, exc)
        else:
            outcome = "window ended unused: the quota is given back"
        log.info("window %d of %s released: %s; %s", window.id, window.username, why, outcome)
        self.audit.submit(
            self._event("window_released", username=window.username, address=window.address,
                        window_id=window.id, detail=f"{why}; {outcome}")
        )  # fmt: skip

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


def _over_quota_message(period: str, week: int | None, month: int | None, usage: QuotaUsage) -> str:
    """Why a login is over quota, and when it can succeed."""
    limit = week if period == "weekly" else month
    used = usage.week_used if period == "weekly" else usage.month_used
    plural = "" if limit == 1 else "s"
    if usage.open_windows and used < (limit or 0):
        until = f"{usage.open_until:%Y-%m-%d %H:%M} UTC" if usage.open_until else "it ends"
        return (
            f"Your {period} quota of {limit} activation{plural} is taken by a window that is "
            f"still open (until {until}); activate through it, or log in again after it ends."
        )
    resets = usage.week_resets_at if period == "weekly" else usage.month_resets_at
    when = f"{resets:%Y-%m-%d %H:%M} UTC" if resets else "later"
    return f"Your {period} quota of {limit} activation{plural} is used up; it resets {when}."
