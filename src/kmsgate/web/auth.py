"""Admin login for the dashboard: signed session cookies, login CSRF, and a login rate limit."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

from argon2 import PasswordHasher
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from kmsgate.auth.passwords import default_hasher, hash_password, needs_rehash, verify_password
from kmsgate.store.database import Store
from kmsgate.store.errors import StoreError
from kmsgate.store.records import User

log = logging.getLogger("kmsgate.web.auth")
_UNRESOLVED = object()

SESSION_MAX_AGE = 8 * 3600
LOGIN_CSRF_MAX_AGE = 2 * 3600
MAX_USERNAME_LENGTH = 64
MAX_NEXT_LENGTH = 1024
# Each argon2 verification takes ~64 MiB and a core for ~0.1 s: bound how many run at once.
MAX_CONCURRENT_VERIFICATIONS = 4


@dataclass(frozen=True, slots=True)
class Admin:
    """The signed-in administrator of one request, with the session's CSRF token."""

    name: str
    csrf_token: str


class SessionCodec:
    """Signs and reads the session and login-CSRF cookies (itsdangerous, HMAC-SHA1 timed)."""

    def __init__(self, secret_key: bytes, *, secure: bool, max_age: int = SESSION_MAX_AGE) -> None:
        """secure: HTTPS deployment; adds the Secure flag and the __Host- name prefix."""
        if len(secret_key) < 16:
            raise ValueError("secret_key must be at least 16 bytes")
        self._secret = secret_key
        self._session = URLSafeTimedSerializer(secret_key, salt="kmsgate.web.session")
        self._csrf = URLSafeTimedSerializer(secret_key, salt="kmsgate.web.login-csrf")
        self.secure = secure
        self.max_age = max_age
        # __Host- makes browsers refuse the cookie unless Secure, Path=/ and host-only, so a
        # sibling subdomain cannot plant a session; it is only allowed over HTTPS.
        prefix = "__Host-" if secure else ""
        self.session_cookie = f"{prefix}kmsgate_session"
        self.csrf_cookie = f"{prefix}kmsgate_login_csrf"

    def fingerprint(self, password_hash: str) -> str:
        """Keyed digest of the stored hash: a password change invalidates every old session."""
        digest = hmac.new(self._secret, password_hash.encode(), hashlib.sha256).hexdigest()
        return digest[:32]

    def issue(self, user: User) -> str:
        """A new session cookie value for user, with a fresh CSRF token."""
        payload = {
            "u": user.name,
            "f": self.fingerprint(user.password_hash),
            "c": secrets.token_urlsafe(24),
        }
        return self._session.dumps(payload)

    def read(self, value: str) -> tuple[str, str, str] | None:
        """(user, fingerprint, csrf) from a cookie value; None when forged, expired or odd."""
        try:
            data: Any = self._session.loads(value, max_age=self.max_age)
        except BadSignature:  # SignatureExpired is a subclass
            return None
        if not isinstance(data, dict):
            return None
        parts = (data.get("u"), data.get("f"), data.get("c"))
        if not all(isinstance(p, str) for p in parts):
            return None
        return (str(parts[0]), str(parts[1]), str(parts[2]))

    def new_login_csrf(self) -> tuple[str, str]:
        """(token for the form, signed value for the cookie) of a login form."""
        token = secrets.token_urlsafe(24)
        return token, self._csrf.dumps(token)

    def login_csrf_token(self, cookie_value: str | None) -> str | None:
        """The token inside a valid login-CSRF cookie; None when missing, forged or expired."""
        if not cookie_value or len(cookie_value) > 512:
            return None
        try:
            token: Any = self._csrf.loads(cookie_value, max_age=LOGIN_CSRF_MAX_AGE)
        except BadSignature:
            return None
        return token if isinstance(token, str) else None

    def check_login_csrf(self, cookie_value: str | None, form_token: str) -> bool:
        """Double-submit check: the signed cookie must carry exactly the form's token."""
        expected = self.login_csrf_token(cookie_value)
        if expected is None or not form_token:
            return False
        return hmac.compare_digest(expected.encode(), form_token.encode())

    def _set(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            secure=self.secure,
            httponly=True,
            samesite="lax",
        )

    def set_session(self, response: Response, value: str) -> None:
        """Attach the session cookie (HttpOnly, SameSite=Lax, Secure when configured)."""
        self._set(response, self.session_cookie, value, self.max_age)

    def clear_session(self, response: Response) -> None:
        """Expire the session cookie."""
        response.delete_cookie(
            self.session_cookie, path="/", secure=self.secure, httponly=True, samesite="lax"
        )

    def set_login_csrf(self, response: Response, value: str) -> None:
        """Attach the login form's CSRF cookie."""
        self._set(response, self.csrf_cookie, value, LOGIN_CSRF_MAX_AGE)

    def clear_login_csrf(self, response: Response) -> None:
        """Expire the login form's CSRF cookie after a successful login."""
        response.delete_cookie(
            self.csrf_cookie, path="/", secure=self.secure, httponly=True, samesite="lax"
        )


@dataclass(slots=True)
class _Attempts:
    times: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0


class LoginLimiter:
    """Failed-login counter per (client IP, user name) and per IP, with temporary lockout."""

    def __init__(
        self,
        *,
        max_failures: int = 5,
        max_failures_per_ip: int = 30,
        window: float = 900.0,
        lockout: float = 900.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Lock a key for `lockout` s after max_failures failures within `window` s."""
        self.max_failures = max_failures
        self.max_failures_per_ip = max_failures_per_ip
        self.window = window
        self.lockout = lockout
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[tuple[str, str | None], _Attempts] = OrderedDict()

    def _get(self, key: tuple[str, str | None]) -> _Attempts:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Attempts()
            # Bounded memory: forget the least recently touched keys first.
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return entry

    def _keys(self, ip: str, user: str) -> tuple[tuple[str, str | None], tuple[str, str | None]]:
        return (ip, user.casefold()), (ip, None)

    def retry_after(self, ip: str, user: str) -> float:
        """Seconds until (ip, user) may try again; 0 when not locked out."""
        now = self.clock()
        wait = 0.0
        for key in self._keys(ip, user):
            entry = self._entries.get(key)
            if entry is not None and entry.locked_until > now:
                wait = max(wait, entry.locked_until - now)
        return wait

    def begin(self, ip: str, user: str) -> None:
        """Count an attempt as a failure until success() says otherwise."""
        # Counting at the start, not on failure, means a burst of parallel guesses cannot all
        # slip in while the first ones are still being verified.
        now = self.clock()
        for key, limit in zip(
            self._keys(ip, user), (self.max_failures, self.max_failures_per_ip), strict=True
        ):
            entry = self._get(key)
            while entry.times and entry.times[0] <= now - self.window:
                entry.times.popleft()
            entry.times.append(now)
            if len(entry.times) >= limit:
                entry.locked_until = now + self.lockout
                entry.times.clear()

    def release(self, ip: str, user: str) -> None:
        """Take back the attempt begin() counted when it got no verdict (server unavailable)."""
        for key in self._keys(ip, user):
            entry = self._entries.get(key)
            if entry is not None and entry.times:
                entry.times.pop()

    def success(self, ip: str, user: str) -> None:
        """Forget the failures of (ip, user) and this attempt's count against the IP."""
        pair, per_ip = self._keys(ip, user)
        self._entries.pop(pair, None)
        entry = self._entries.get(per_ip)
        if entry is not None and entry.times:
            entry.times.pop()


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
        limiter: LoginLimiter | None = None,
        hasher: PasswordHasher | None = None,
    ) -> None:
        """hasher: argon2 costs for new hashes and rehash checks (tests pass cheap ones)."""
        self.store = store
        self.codec = codec
        self.limiter = limiter or LoginLimiter()
        self.hasher = hasher or default_hasher()
        self._verify_slots = asyncio.Semaphore(MAX_CONCURRENT_VERIFICATIONS)
        self._dummy_hash: str | None = None

    async def _verify(self, password_hash: str, password: str) -> bool:
        async with self._verify_slots:
            return await run_in_threadpool(
                verify_password, password_hash, password, hasher=self.hasher
            )

    async def _dummy(self) -> str:
        # Unknown users still cost one verification, so timing does not reveal which exist.
        if self._dummy_hash is None:
            self._dummy_hash = await run_in_threadpool(
                hash_password, secrets.token_urlsafe(16), hasher=self.hasher
            )
        return self._dummy_hash

    async def login(self, ip: str, username: str, password: str) -> LoginResult:
        """Verify an admin login; on success return a new session cookie value."""
        denied = LoginResult(None, 401, "Invalid user name or password.")
        if not username or len(username) > MAX_USERNAME_LENGTH or not password:
            return denied
        wait = self.limiter.retry_after(ip, username)
        if wait > 0:
            minutes = max(1, round(wait / 60))
            return LoginResult(
                None,
                429,
                f"Too many failed logins. Try again in about {minutes} minute"
                f"{'s' if minutes != 1 else ''}.",
                wait,
            )
        self.limiter.begin(ip, username)
        user = await self.store.get_user(username)
        stored = user.password_hash if user is not None else await self._dummy()
        ok = await self._verify(stored, password)
        if user is None or not ok or not user.is_admin or user.disabled:
            # The user name is attacker-controlled: %r keeps the log line one line.
            log.warning("dashboard login failed for %r from %s", username[:64], ip)
            return denied
        self.limiter.success(ip, username)
        if needs_rehash(user.password_hash, hasher=self.hasher):
            user = await self._rehash(user, password)
        log.info("dashboard login: %r from %s", user.name, ip)
        return LoginResult(self.codec.issue(user), 303, "")

    async def _rehash(self, user: User, password: str) -> User:
        """Upgrade a hash made with older costs; keep the old one if the store refuses."""
        new_hash = await run_in_threadpool(hash_password, password, hasher=self.hasher)
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
        name, fingerprint, csrf = parsed
        user = await self.store.get_user(name)
        # Re-checked on every request: removing, disabling, demoting or changing the password
        # of an admin ends their sessions at once, despite the stateless cookie.
        if user is None or not user.is_admin or user.disabled:
            return None
        if not hmac.compare_digest(fingerprint, self.codec.fingerprint(user.password_hash)):
            return None
        return Admin(user.name, csrf)


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
    """The peer address, ignoring proxies (create_app resolves --trust-proxy on top of this)."""
    return request.client.host if request.client else "unknown"
