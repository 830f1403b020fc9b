"""The dashboard's signed cookies: the session, the login form's CSRF token, the device.

itsdangerous (HMAC, timed) signs them with the node's web secret; with HTTPS (--web-cert)
their names carry the __Host- prefix.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.responses import Response

from kmsgate.store.records import User

SESSION_MAX_AGE = 8 * 3600
LOGIN_CSRF_MAX_AGE = 2 * 3600
# A browser that logged in as a user is not a stranger to that user's lockout this long.
DEVICE_MAX_AGE = 90 * 86400
# The user names a device cookie may carry (the dashboard's and the throttle's bound).
MAX_USERNAME_LENGTH = 64
# The login-CSRF and device cookies are short; anything longer is not ours.
MAX_SMALL_COOKIE = 512


class SessionCodec:
    """Signs and reads the session and login-CSRF cookies (itsdangerous, HMAC-SHA1 timed)."""

    def __init__(self, secret_key: bytes, *, secure: bool, max_age: int = SESSION_MAX_AGE) -> None:
        """secure: HTTPS deployment; adds the Secure flag and the __Host- name prefix."""
        if len(secret_key) < 16:
            raise ValueError("secret_key must be at least 16 bytes")
        self._secret = secret_key
        self._session = URLSafeTimedSerializer(secret_key, salt="kmsgate.web.session")
        self._csrf = URLSafeTimedSerializer(secret_key, salt="kmsgate.web.login-csrf")
        self._device = URLSafeTimedSerializer(secret_key, salt="kmsgate.web.device")
        self.secure = secure
        self.max_age = max_age
        # __Host- makes browsers refuse the cookie unless Secure, Path=/ and host-only, so a
        # sibling subdomain cannot plant a session; it is only allowed over HTTPS.
        prefix = "__Host-" if secure else ""
        self.session_cookie = f"{prefix}kmsgate_session"
        self.csrf_cookie = f"{prefix}kmsgate_login_csrf"
        self.device_cookie = f"{prefix}kmsgate_device"

    def fingerprint(self, password_hash: str) -> str:
        """Keyed digest of the stored hash: a password change invalidates every old session."""
        digest = hmac.new(self._secret, password_hash.encode(), hashlib.sha256).hexdigest()
        return digest[:32]

    def issue(self, user: User, session_token: str) -> str:
        """A cookie value for user's session `session_token`, with a fresh CSRF token."""
        payload = {
            "u": user.name,
            "f": self.fingerprint(user.password_hash),
            "c": secrets.token_urlsafe(24),
            "s": session_token,
        }
        return self._session.dumps(payload)

    def read(self, value: str) -> tuple[str, str, str, str] | None:
        """(user, fingerprint, csrf, session token) from a cookie; None if forged, expired, odd."""
        try:
            data: Any = self._session.loads(value, max_age=self.max_age)
        except BadSignature:  # SignatureExpired is a subclass
            return None
        if not isinstance(data, dict):
            return None
        parts = (data.get("u"), data.get("f"), data.get("c"), data.get("s"))
        if not all(isinstance(p, str) and p for p in parts):
            return None
        return (str(parts[0]), str(parts[1]), str(parts[2]), str(parts[3]))

    def new_login_csrf(self) -> tuple[str, str]:
        """(token for the form, signed value for the cookie) of a login form."""
        token = secrets.token_urlsafe(24)
        return token, self._csrf.dumps(token)

    def login_csrf_token(self, cookie_value: str | None) -> str | None:
        """The token inside a valid login-CSRF cookie; None when missing, forged or expired."""
        token = _loaded(self._csrf, cookie_value, LOGIN_CSRF_MAX_AGE)
        return token if isinstance(token, str) else None

    def check_login_csrf(self, cookie_value: str | None, form_token: str) -> bool:
        """Double-submit check: the signed cookie must carry exactly the form's token."""
        expected = self.login_csrf_token(cookie_value)
        if expected is None or not form_token:
            return False
        return hmac.compare_digest(expected.encode(), form_token.encode())

    @staticmethod
    def _device_name(user: str) -> str:
        return user.strip()[:MAX_USERNAME_LENGTH].casefold()

    def issue_device(self, user: str) -> str:
        """A device cookie value: this browser logged in as `user` (a fresh id each time)."""
        return self._device.dumps({"u": self._device_name(user), "d": secrets.token_urlsafe(12)})

    def device_of(self, cookie_value: str | None, user: str | None = None) -> str | None:
        """The id of a valid device cookie (issued to `user`, when given); None otherwise."""
        data = _loaded(self._device, cookie_value, DEVICE_MAX_AGE)
        if not isinstance(data, dict) or not isinstance(data.get("u"), str):
            return None
        if user is not None and data["u"] != self._device_name(user):
            return None
        device = data.get("d")
        return device if isinstance(device, str) and device else None

    def set_device(self, response: Response, user: str) -> None:
        """Attach a fresh device cookie for `user` (after a successful login)."""
        self._set(response, self.device_cookie, self.issue_device(user), DEVICE_MAX_AGE)

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


def _loaded(serializer: URLSafeTimedSerializer, value: str | None, max_age: int) -> Any:
    """What a small signed cookie carries; None when missing, oversized, forged or expired."""
    if not value or len(value) > MAX_SMALL_COOKIE:
        return None
    try:
        return serializer.loads(value, max_age=max_age)
    except BadSignature:  # SignatureExpired is a subclass
        return None
