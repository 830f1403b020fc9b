"""Failed-login throttling shared by the dashboard's admin login and the gateway's portal.

The same rules hold for both: failures are counted per (address, user), per address and per
user across all addresses; a key that reaches its limit within `window` seconds is locked for
`lockout` seconds. The per-user count stops one password being guessed from many machines.

A stranger must not lock a user out that way, so the per-user lock binds only clients it
cannot tell from a stranger: not an address the user logged in from before, nor a browser
holding a device cookie issued at the user's last login (its attempts are counted under the
device, not the address, so no one sharing the address can lock it either).
"""

from __future__ import annotations

import itertools
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from kmsgate.access.accounts.base import MAX_USERNAME_LENGTH

# When the limiter is full, the entry that goes is the least-counted of this many of the
# least recently touched: a flood of one-off names cannot push out a count that matters.
EVICTION_SAMPLE = 8
# Addresses remembered per user as "logged in from here", and users remembered at most.
KNOWN_ADDRESSES_PER_USER = 16
KNOWN_USERS = 10_000
KNOWN_FOR = 30 * 86400.0


@dataclass(slots=True)
class _Attempts:
    times: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0

    def weight(self, now: float) -> float:
        """How much forgetting this entry would give away: a lock most, then each failure."""
        return float("inf") if self.locked_until > now else len(self.times)


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
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            # Bounded memory: forget among the least recently touched keys the one that
            # counts least (an attacker's one-off names, not an account's 49 failures).
            while len(entries) >= self.max_entries:
                now = self.clock()
                oldest = itertools.islice(entries.items(), EVICTION_SAMPLE)
                victim = min(oldest, key=lambda item: item[1].weight(now))[0]
                del entries[victim]
            entry = entries[key] = _Attempts()
        else:
            entries.move_to_end(key)
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
    """Failed logins per (address, user) and per address, and per user across addresses.

    `device`: the id of a device cookie the web layer found valid for this user; its
    attempts are counted under the device instead of the address, and the user's lock does
    not bind it. Nor does it bind an address the user logged in from within KNOWN_FOR.
    """

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
        self.clock = clock
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
        # user -> address -> until when a login from there vouches for the next ones.
        self._known: OrderedDict[str, OrderedDict[str, float]] = OrderedDict()
        # address -> until when a login of anyone from there vouches for it.
        self._vouched: OrderedDict[str, float] = OrderedDict()

    @staticmethod
    def _user(user: str) -> str:
        return user.strip()[:MAX_USERNAME_LENGTH].casefold()

    @staticmethod
    def _source(ip: str, device: str | None) -> str:
        return ip if device is None else f"device {device}"

    def trusted(self, ip: str, user: str, device: str | None = None) -> bool:
        """Whether the user lock does not bind this client (a known address, a device)."""
        return device is not None or self.known(ip, user)

    def vouched(self, ip: str) -> bool:
        """Whether some user logged in from `ip` within KNOWN_FOR (before the name is read)."""
        return self._vouched.get(ip, 0.0) > self.clock()

    def known(self, ip: str, user: str) -> bool:
        """Whether `user` logged in from `ip` within KNOWN_FOR."""
        addresses = self._known.get(self._user(user))
        return addresses is not None and addresses.get(ip, 0.0) > self.clock()

    def _binds_user_lock(self, ip: str, name: str, device: str | None) -> bool:
        return device is None and not self.known(ip, name)

    def retry_after(self, ip: str, user: str, device: str | None = None) -> float:
        """Seconds until (ip, user) may try again; 0 when not locked out."""
        name = self._user(user)
        wait = self.by_address.retry_after(self._source(ip, device), name)
        if self._binds_user_lock(ip, name, device):
            wait = max(wait, self.by_user.retry_after(name, ""))
        return wait

    def lock_scope(self, ip: str, user: str, device: str | None = None) -> str:
        """What a lock that binds this client holds shut, for the audit trail and the log."""
        if device is not None:
            return f"logins from this browser at {ip} are locked"
        if self.user_locked(user):
            return "the account is locked for addresses and browsers it was not used from"
        return f"logins from {ip} are locked"

    def user_locked(self, user: str) -> bool:
        """Whether the account is locked for every client it cannot tell from a stranger."""
        return self.by_user.retry_after(self._user(user), "") > 0

    def begin(self, ip: str, user: str, device: str | None = None) -> None:
        """Count an attempt as a failure until success() or release() says otherwise."""
        name = self._user(user)
        self.by_address.begin(self._source(ip, device), name)
        if self._binds_user_lock(ip, name, device):
            self.by_user.begin(name, "")

    def success(self, ip: str, user: str, device: str | None = None) -> None:
        """The password was right: forget this client's failures, and vouch for `ip`.

        The user's own count is kept when the user lock did not bind this client: strangers'
        guesses go on counting while the user logs in from a known place.
        """
        name = self._user(user)
        self.by_address.success(self._source(ip, device), name)
        if self._binds_user_lock(ip, name, device):
            self.by_user.success(name, "")
        addresses = self._known.pop(name, None) or OrderedDict()
        addresses.pop(ip, None)
        addresses[ip] = self.clock() + KNOWN_FOR
        while len(addresses) > KNOWN_ADDRESSES_PER_USER:
            addresses.popitem(last=False)
        self._known[name] = addresses
        while len(self._known) > KNOWN_USERS:
            self._known.popitem(last=False)
        self._vouched.pop(ip, None)
        self._vouched[ip] = addresses[ip]
        while len(self._vouched) > KNOWN_USERS:
            self._vouched.popitem(last=False)

    def release(self, ip: str, user: str, device: str | None = None) -> None:
        """No verdict (account server unavailable): the attempt does not count."""
        name = self._user(user)
        self.by_address.release(self._source(ip, device), name)
        if self._binds_user_lock(ip, name, device):
            self.by_user.release(name, "")
