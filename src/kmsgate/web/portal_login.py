"""The portal's login logic (limiter, gateway, lockout audit) and the KMS address it shows.

The routes are in portal.py; this module knows nothing of HTTP, so the web context can hold
a Portal without importing the routes.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass

from kmsgate.access.accounts.base import MAX_USERNAME_LENGTH
from kmsgate.access.gateway import Gateway, LoginOutcome
from kmsgate.access.throttle import LoginThrottle as PortalLimiter
from kmsgate.observability.log_budget import RefusalReport
from kmsgate.store.audit import AuditEvent
from kmsgate.store.errors import StoreError
from kmsgate.store.gateway import Window
from kmsgate.web.login_slots import LoginSlots
from kmsgate.web.render import as_utc

log = logging.getLogger("kmsgate.web.portal")

# Account backends run argon2 or a network round trip per login: bound how many run at once.
MAX_CONCURRENT_LOGINS = 8
# Logins checking or waiting for a turn; past this a login gets 503 at once rather than a
# place in a queue a flood would make endless. The last RESERVED_LOGINS places are for logins
# kmsgate can tell from a stranger's (an address the user logged in from, a device cookie).
MAX_PENDING_LOGINS = 24
RESERVED_LOGINS = 4
# One name's logins in progress at most: an account holder's own (trusted) logins cannot fill
# the reserved places, and more at once would only lock the name out of its address.
MAX_PENDING_PER_USER = 2
BUSY_RETRY = 5
BUSY_LOG_INTERVAL = 10.0
UNAVAILABLE_RETRY = 30


# ---------------------------------------------------------------- login


@dataclass(frozen=True, slots=True)
class ClientCommands:
    """What the portal tells a Windows or Office client to set, to activate against us."""

    skms: str  # slmgr /skms HOST:PORT ([V6]:PORT)
    sethst: str  # ospp.vbs /sethst:HOST
    setprt: int  # ospp.vbs /setprt:PORT


@dataclass(frozen=True, slots=True)
class KmsAddress:
    """Where clients reach the KMS listener: --public-address, else the portal's own name."""

    host: str | None = None  # None: the host name the browser used for the portal
    port: int = 1688

    def commands(self, browser_host: str | None) -> ClientCommands:
        """The commands for a browser that reached the portal as `browser_host`."""
        host = (self.host or browser_host or "this-server").strip("[]")
        skms_host = f"[{host}]" if ":" in host else host
        return ClientCommands(skms=f"{skms_host}:{self.port}", sethst=host, setprt=self.port)


@dataclass(frozen=True, slots=True)
class PortalAttempt:
    """A portal login's answer: HTTP status, message, the gateway's outcome when it was asked."""

    status: int
    message: str
    outcome: LoginOutcome | None = None
    retry_after: float = 0.0


def window_seconds(window: Window) -> int:
    """How long the window stays open, in whole seconds."""
    return max(0, int((as_utc(window.expires_at) - as_utc(window.granted_at)).total_seconds()))


class Portal:
    """Rate limits logins, asks the gateway, and audits lockouts."""

    def __init__(self, gateway: Gateway, limiter: PortalLimiter) -> None:
        """gateway: opens windows and audits logins; limiter: the portal's failure counts."""
        self.gateway = gateway
        self.limiter = limiter
        self._slots = LoginSlots(MAX_CONCURRENT_LOGINS)
        self.pending = 0  # logins past the limiter, checking or waiting for a slot
        self._pending_of: Counter[str] = Counter()  # the same, by user name
        self._busy = RefusalReport(
            log, "portal logins refused, too many in progress", BUSY_LOG_INTERVAL
        )

    def note_busy(self) -> None:
        """Count a login refused because too many were in progress; log now and then."""
        self._busy.note()

    def has_room(self, *, trusted: bool = False) -> bool:
        """Whether a login would be taken now (`trusted`: it may use the reserved places)."""
        return self.pending < MAX_PENDING_LOGINS - (0 if trusted else RESERVED_LOGINS)

    def _locked(self, wait: float) -> PortalAttempt:
        minutes = max(1, round(wait / 60))
        plural = "s" if minutes != 1 else ""
        return PortalAttempt(
            429, f"Too many failed logins. Try again in about {minutes} minute{plural}.", None, wait
        )

    def _audit_lockout(self, address: str, username: str, wait: float, device: str | None) -> None:
        scope = self.limiter.lock_scope(address, username, device)
        gateway = self.gateway
        log.warning("portal logins of %r from %s locked out", username[:64], address)
        gateway.audit.submit(
            AuditEvent(
                time=gateway.clock(),
                kind="login_locked",
                node=gateway.node,
                username=username.strip()[:MAX_USERNAME_LENGTH],
                address=address,
                backend=gateway.backend.name,
                detail=f"too many failed logins: {scope} for {math.ceil(wait)} s",
            )
        )

    async def login(
        self, address: str, username: str, password: str, device: str | None = None
    ) -> PortalAttempt:
        """Check the limiter, then the gateway; the password goes nowhere but the gateway.

        `device`: the id of the browser's device cookie, when it was issued to `username`.
        """
        wait = self.limiter.retry_after(address, username, device)
        if wait > 0:
            return self._locked(wait)
        trusted = self.limiter.trusted(address, username, device)
        name = username.strip()
        if not self.has_room(trusted=trusted) or self._pending_of[name] >= MAX_PENDING_PER_USER:
            self.note_busy()
            message = "Too many logins are being checked right now. Try again in a few seconds."
            return PortalAttempt(503, message, None, BUSY_RETRY)
        self.limiter.begin(address, username, device)
        self.pending += 1
        self._pending_of[name] += 1
        try:
            async with self._slots.turn(trusted=trusted):
                outcome = await self.gateway.login(username, password, address)
        except StoreError as exc:
            self.limiter.release(address, username, device)
            log.warning("portal login failed: store unavailable: %s", exc)
            message = "The service is unavailable; try again shortly."
            return PortalAttempt(503, message, None, UNAVAILABLE_RETRY)
        finally:
            self.pending -= 1
            self._pending_of[name] -= 1
            if not self._pending_of[name]:
                del self._pending_of[name]
        if outcome.status in (200, 403):
            self.limiter.success(address, username, device)
        elif outcome.status == 503:
            self.limiter.release(address, username, device)
            return PortalAttempt(503, outcome.message, outcome, UNAVAILABLE_RETRY)
        else:
            wait = self.limiter.retry_after(address, username, device)
            if wait > 0:  # this failure started the lockout: audit it once
                self._audit_lockout(address, username, wait, device)
        return PortalAttempt(outcome.status, outcome.message, outcome)
