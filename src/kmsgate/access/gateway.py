"""The authenticating gateway: logins grant single-use windows, within quotas, all audited."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from kmsgate.access.accounts.base import AccountBackend, BackendUnavailable
from kmsgate.access.admission import Admission, WindowRequestPolicy
from kmsgate.access.audit_trail import AuditWriter, Clock, utc_now
from kmsgate.access.nft import NftError, NftWindowSet, seconds_left
from kmsgate.catalog import Catalog
from kmsgate.net import Peer, canonical_address
from kmsgate.protocol.events import ActivationRefused, ActivationServed, Event
from kmsgate.store.audit import AuditEvent
from kmsgate.store.errors import StoreError
from kmsgate.store.gateway import GatewayStore, QuotaUsage, Window

if TYPE_CHECKING:
    from kmsgate.observability.metrics import Metrics

log = logging.getLogger("kmsgate.gateway")
# A served activation's spend, or a release, is retried this often before it is given up.
WINDOW_UPDATE_TRIES = 5
# A window released with less than this left has ended: the relay closes at the window's end
# by a timer that may fire a few milliseconds early, and "open again" for them means nothing.
REOPEN_AT_LEAST = timedelta(seconds=1)


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
        clock: Clock = utc_now,
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
        # By connection, not by address and port: each connection has a Peer object of its
        # own, while another connection from the same address and port (to another of the
        # host's addresses) is refused, and its close must not end this one's admission.
        self._admitted: dict[int, tuple[Peer, Admission]] = {}
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
        self._admitted[id(peer)] = (peer, admission)
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

    def _admission_of(self, peer: Peer) -> Admission | None:
        """The admission of the connection whose Peer object this is (not an equal one)."""
        entry = self._admitted.get(id(peer))
        return entry[1] if entry is not None and entry[0] is peer else None

    def forget(self, peer: Peer, reason: str = "") -> None:
        """A connection closed: if it was admitted and served nothing, release its window."""
        admission = self._admission_of(peer)
        if admission is None:
            return
        del self._admitted[id(peer)]
        if admission.served:
            return
        why = reason or "the connection closed without a served activation"
        self._update(lambda: self._release(admission.window, why))

    def hook(self, peer: Peer, event: Event) -> None:
        """KmsHost event hook: link each activation to the login that admitted it."""
        if not isinstance(event, ActivationServed | ActivationRefused):
            return
        admission = self._admission_of(peer)
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
        if window.expires_at - now < REOPEN_AT_LEAST:
            now = max(now, window.expires_at)
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
