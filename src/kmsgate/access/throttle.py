"""Failed-login throttling shared by the dashboard's admin login and the gateway's portal.

The same rules hold for both: failures are counted per (address, user), per address and per
user across all addresses; a key that reaches its limit within `window` seconds is locked for
`lockout` seconds. The per-user count stops one password being guessed from many machines.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from kmsgate.access.accounts.base import MAX_USERNAME_LENGTH


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


class LoginThrottle:
    """Failed logins per (address, user) and per address, and per user across addresses."""

    def __init__(
        self,
        *,
        max_failures: int = 5,
        max_failures_per_ip: int = 30,
        max_failures_per_user: int = 50,
        window: float = 900.0,
        lockout: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Lock a key for `lockout` s after its failure limit within `window` s."""
        self.by_address = LoginLimiter(
            max_failures=max_failures,
            max_failures_per_ip=max_failures_per_ip,
            window=window,
            lockout=lockout,
            clock=clock,
        )
        # Keyed (user, "") and (user, None): the first one locks; the second never does.
        self.by_user = LoginLimiter(
            max_failures=max_failures_per_user,
            max_failures_per_ip=sys.maxsize,
            window=window,
            lockout=lockout,
            clock=clock,
        )

    @staticmethod
    def _user(user: str) -> str:
        return user.strip()[:MAX_USERNAME_LENGTH].casefold()

    def retry_after(self, ip: str, user: str) -> float:
        """Seconds until (ip, user) may try again; 0 when not locked out."""
        name = self._user(user)
        return max(self.by_address.retry_after(ip, name), self.by_user.retry_after(name, ""))

    def user_locked(self, user: str) -> bool:
        """Whether the account itself is locked, from every address."""
        return self.by_user.retry_after(self._user(user), "") > 0

    def begin(self, ip: str, user: str) -> None:
        """Count an attempt as a failure until success() or release() says otherwise."""
        name = self._user(user)
        self.by_address.begin(ip, name)
        self.by_user.begin(name, "")

    def success(self, ip: str, user: str) -> None:
        """The password was right: forget the user's failures."""
        name = self._user(user)
        self.by_address.success(ip, name)
        self.by_user.success(name, "")

    def release(self, ip: str, user: str) -> None:
        """No verdict (account server unavailable): the attempt does not count."""
        name = self._user(user)
        self.by_address.release(ip, name)
        self.by_user.release(name, "")
