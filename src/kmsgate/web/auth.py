"""Admin login for the dashboard: sessions held in the database, login CSRF, lockouts.

The session cookie is signed and names a row of `web_sessions`; logging out deletes the row,
so the cookie stops working at once, on every node sharing the database and after restarts.
"""

from __future__ import annotations

import functools
import hmac
import logging
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

from starlette.requests import Request

from kmsgate.access.throttle import LoginThrottle
from kmsgate.auth.passwords import (
    HashingBusyError,
    HashingPool,
    check_password,
    default_pool,
    hash_password,
    needs_rehash,
)
from kmsgate.observability.log_budget import RefusalReport
from kmsgate.store.audit import AuditEvent
from kmsgate.store.database import Store
from kmsgate.store.errors import StoreError
from kmsgate.store.gateway import GatewayStore
from kmsgate.store.records import User
from kmsgate.store.sessions import SessionStore
from kmsgate.web.cookies import MAX_USERNAME_LENGTH, SessionCodec

if TYPE_CHECKING:
    from argon2 import PasswordHasher

log = logging.getLogger("kmsgate.web.auth")
_UNRESOLVED = object()

MAX_NEXT_LENGTH = 1024
BUSY_RETRY = 5
BUSY_LOG_INTERVAL = 10.0
# The backend name of dashboard logins in the audit trail.
AUDIT_BACKEND = "dashboard"


@dataclass(frozen=True, slots=True)
class Admin:
    """The signed-in administrator of one request, with the session's CSRF token."""

    name: str
    csrf_token: str
    session_token: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class LoginResult:
    """Outcome of a login attempt: a session value on success, else a reason and status."""

    cookie: str | None
    status: int
    message: str
    retry_after: float = 0.0


class Authenticator:
    """Checks admin credentials against the store and resolves sessions per request."""

    def __init__(
        self,
        store: Store,
        codec: SessionCodec,
        *,
        limiter: LoginThrottle | None = None,
        hasher: PasswordHasher | None = None,
        pool: HashingPool | None = None,
        node: str = "",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """hasher, pool: argon2 costs and the threads checks run on (tests pass cheap ones).

        node names this node in audit rows; clock gives session times (real UTC time).
        """
        self.store = store
        self.codec = codec
        self.sessions = SessionStore(store)
        self.limiter = limiter or LoginThrottle()
        # None: the process's default hasher, made (and argon2-cffi loaded) at the first hash.
        self.hasher = hasher
        self.pool = pool or default_pool()
        self.node = node
        self.clock = clock
        self._dummy_hash: str | None = None
        self._busy_report = RefusalReport(
            log, "dashboard logins refused, hashing pool full", BUSY_LOG_INTERVAL
        )

    async def _dummy(self) -> str:
        # Unknown users still cost one verification, so timing does not reveal which exist.
        if self._dummy_hash is None:
            self._dummy_hash = await self.pool.run(
                functools.partial(hash_password, secrets.token_urlsafe(16), hasher=self.hasher)
            )
        return self._dummy_hash

    def _locked(self, wait: float) -> LoginResult:
        minutes = max(1, round(wait / 60))
        return LoginResult(
            None,
            429,
            f"Too many failed logins. Try again in about {minutes} minute"
            f"{'s' if minutes != 1 else ''}.",
            wait,
        )

    def note_busy(self) -> None:
        """Count a login refused because the hashing pool was full; log now and then."""
        self._busy_report.note()

    def _busy_result(self) -> LoginResult:
        self.note_busy()
        return LoginResult(
            None,
            503,
            "Too many logins are being checked right now. Try again in a few seconds.",
            BUSY_RETRY,
        )

    async def login(
        self, ip: str, username: str, password: str, device: str | None = None
    ) -> LoginResult:
        """Verify an admin login; on success return a new session cookie value.

        `device`: the id of the browser's device cookie, when it was issued to `username`.
        """
        denied = LoginResult(None, 401, "Invalid user name or password.")
        if not username or len(username) > MAX_USERNAME_LENGTH or not password:
            return denied
        wait = self.limiter.retry_after(ip, username, device)
        if wait > 0:
            # Refused without looking at the password: during a lockout the right one fails too.
            return self._locked(wait)
        trusted = self.limiter.trusted(ip, username, device)
        if not self.pool.has_room(reserved=trusted):
            # Cheap refusal before any database work: a flood is answered at the door.
            return self._busy_result()
        if not self.pool.has_room() and not await self._is_admin(username):
            # The reserved places are the administrators': a portal user's own known
            # address or device cookie (the portal sets it too) must not fill them.
            return self._busy_result()
        self.limiter.begin(ip, username, device)
        # This attempt reached a limit: if it fails too, it is the one that locks.
        locks = self.limiter.retry_after(ip, username, device) > 0
        try:
            user = await self.store.get_user(username)
            stored = user.password_hash if user is not None else await self._dummy()
            ok = await check_password(
                stored, password, hasher=self.hasher, pool=self.pool, trusted=trusted
            )
        except HashingBusyError:
            self.limiter.release(ip, username, device)
            return self._busy_result()
        except StoreError:
            self.limiter.release(ip, username, device)
            raise
        if user is None or not ok or not user.is_admin or user.disabled:
            # The user name is attacker-controlled: %r keeps the log line one line.
            log.warning("dashboard login failed for %r from %s", username[:64], ip)
            reason = (
                "wrong user name or password"
                if user is None or not ok
                else ("the account is disabled" if user.disabled else "not an administrator")
            )
            await self._audit("login_failed", ip, username, reason)
            if locks:
                await self._audit_lockout(ip, username, device)
            return denied
        self.limiter.success(ip, username, device)
        if needs_rehash(user.password_hash, hasher=self.hasher):
            user = await self._rehash(user, password)
        token = secrets.token_urlsafe(32)
        now = self.clock()
        await self.sessions.create(
            token, user.name, now, now + timedelta(seconds=self.codec.max_age)
        )
        log.info("dashboard login: %r from %s", user.name, ip)
        await self._audit("login_ok", ip, user.name, "")
        return LoginResult(self.codec.issue(user, token), 303, "")

    async def _is_admin(self, username: str) -> bool:
        """Whether `username` names an enabled administrator."""
        user = await self.store.get_user(username)
        return user is not None and user.is_admin and not user.disabled

    async def _audit(self, kind: str, ip: str, username: str, detail: str) -> None:
        """One audit row of a dashboard login (backend `dashboard`); logged if it fails."""
        name = username.strip()[:MAX_USERNAME_LENGTH]
        event = AuditEvent(
            time=self.clock(),
            kind=kind,
            node=self.node,
            username=name,
            address=ip,
            backend=AUDIT_BACKEND,
            detail=detail,
        )
        try:
            await GatewayStore(self.store).add_audit([event])
        except StoreError as exc:
            log.warning("could not audit the dashboard %s of %r: %s", kind, name, exc)

    async def _audit_lockout(self, ip: str, username: str, device: str | None) -> None:
        wait = self.limiter.retry_after(ip, username, device)
        name = username.strip()[:MAX_USERNAME_LENGTH]
        scope = self.limiter.lock_scope(ip, username, device)
        detail = f"too many failed dashboard logins: {scope} for {math.ceil(wait)} s"
        log.warning("dashboard login of %r from %s: %s", name, ip, detail)
        await self._audit("login_locked", ip, name, detail)

    async def _rehash(self, user: User, password: str) -> User:
        """Upgrade a hash made with older costs; keep the old one if the store refuses."""
        try:
            new_hash = await self.pool.run(
                functools.partial(hash_password, password, hasher=self.hasher)
            )
        except HashingBusyError:
            return user  # next time
        try:
            await self.store.set_password(user.name, new_hash)
        except StoreError as exc:
            log.warning("could not upgrade the password hash of %r: %s", user.name, exc)
            return user
        return User(
            name=user.name,
            password_hash=new_hash,
            is_admin=user.is_admin,
            created=user.created,
            disabled=user.disabled,
        )

    async def end_session(self, admin: Admin, ip: str = "unknown") -> None:
        """Log out: the session's row goes, so its cookie no longer opens anything, anywhere."""
        if admin.session_token and await self.sessions.revoke(admin.session_token):
            log.info("dashboard logout: %r", admin.name)
            await self._audit("logout", ip, admin.name, "")

    async def current_admin(self, request: Request) -> Admin | None:
        """The admin of the request's session cookie, or None; cached on the request."""
        cached = getattr(request.state, "admin", _UNRESOLVED)
        if cached is not _UNRESOLVED:
            return cast("Admin | None", cached)
        admin = await self._resolve(request.cookies.get(self.codec.session_cookie))
        request.state.admin = admin
        return admin

    async def _resolve(self, cookie: str | None) -> Admin | None:
        if not cookie or len(cookie) > 4096:
            return None
        parsed = self.codec.read(cookie)
        if parsed is None:
            return None
        name, fingerprint, csrf, token = parsed
        # Logged out (row deleted) or expired: the signature alone opens nothing.
        if await self.sessions.user_of(token, self.clock()) != name:
            return None
        user = await self.store.get_user(name)
        # Re-checked on every request: removing, disabling, demoting or changing the password
        # of an admin ends their sessions at once.
        if user is None or not user.is_admin or user.disabled:
            return None
        if not hmac.compare_digest(fingerprint, self.codec.fingerprint(user.password_hash)):
            return None
        return Admin(user.name, csrf, token)


def safe_next(target: str | None) -> str:
    """A local path to return to after login; anything else (other hosts, schemes) is '/'."""
    if not target or len(target) > MAX_NEXT_LENGTH:
        return "/"
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or target.startswith(("/login", "/logout")):
        return "/"
    return target


def client_ip(request: Request) -> str:
    """The request's client as given (behind a trusted proxy: its client), or "unknown"."""
    return request.client.host if request.client else "unknown"
