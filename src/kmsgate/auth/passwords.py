"""Argon2id password hashing shared by the dashboard login, portal accounts and `kmsgate users`.

Each check costs ~64 MiB and tens of milliseconds of CPU on several threads. Run by a login
flood on the event loop's default executor, that CPU came out of the KMS host's share. Checks
therefore run on a `HashingPool`: one worker thread by default, at a lower scheduling priority
(nice), with a bounded number of waiting checks; past that bound an async caller gets
`HashingBusyError` at once (the web answers 503) instead of queueing more work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from kmsgate.errors import KmsgateError

if TYPE_CHECKING:
    from argon2 import PasswordHasher

__all__ = [
    "HashingBusyError",
    "HashingPool",
    "check_password",
    "default_hasher",
    "default_pool",
    "hash_password",
    "needs_rehash",
    "verify_password",
]

log = logging.getLogger("kmsgate.auth")
T = TypeVar("T")

# Argon2 hashes the whole input; a cap stops a huge form field from becoming a CPU/memory sink.
MAX_PASSWORD_LENGTH = 1024
# The KMS host's event loop runs at nice 0. A check runs on argon2's 4 lane threads, which
# inherit the worker's nice value: at 19 (weight 15 against 1024) all four together get
# about 6 % of a core the host needs, and all of an idle one.
HASHING_NICE = 19
HASHING_WORKERS = 1
HASHING_QUEUE = 8
# Places of the queue only logins kmsgate can tell from a stranger's may take (a known
# address, a device cookie): a flood of strangers' logins cannot keep those out.
HASHING_RESERVED = 2


class HashingBusyError(KmsgateError):
    """Every place in the hashing pool is taken; the caller should answer 'try again soon'."""


class HashingPool:
    """A few low-priority threads for password hashing, with a bounded queue in front."""

    def __init__(
        self,
        *,
        workers: int = HASHING_WORKERS,
        max_waiting: int = HASHING_QUEUE,
        nice: int = HASHING_NICE,
        reserved: int = HASHING_RESERVED,
    ) -> None:
        """workers: checks at once; max_waiting: checks queued behind them before refusing,
        `reserved` of them for callers that say so (trusted logins)."""
        if workers < 1 or max_waiting < 0 or not 0 <= reserved <= max_waiting:
            raise ValueError("a hashing pool needs a worker and a non-negative queue")
        self.workers = workers
        self.max_waiting = max_waiting
        self.nice = nice
        self.places = workers + max_waiting
        self.reserved = reserved
        self._taken = 0
        self._freed = threading.Condition()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            workers, thread_name_prefix="kmsgate-hash", initializer=self._lower_priority
        )
        self._idents: set[int] = set()
        #: Kernel thread ids of the workers (for /proc and tests).
        self.native_ids: set[int] = set()

    def _lower_priority(self) -> None:
        self._idents.add(threading.get_ident())
        tid = threading.get_native_id()
        self.native_ids.add(tid)
        try:
            # Per thread on Linux; argon2's own lane threads, started from here, inherit it.
            current = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, max(current, self.nice))
        except OSError as exc:
            log.warning("password hashing runs at normal priority: %s", exc)

    def _limit(self, reserved: bool) -> int:
        return self.places if reserved else self.places - self.reserved

    def has_room(self, *, reserved: bool = False) -> bool:
        """Whether a check submitted now would be taken (a hint to skip work before it)."""
        return self._taken < self._limit(reserved)

    def _take_place(self, wait: bool, reserved: bool = False) -> None:
        limit = self._limit(reserved)
        with self._freed:
            while self._taken >= limit:
                if not wait:
                    raise HashingBusyError(f"{self.places} password checks in progress")
                self._freed.wait()
            self._taken += 1

    def _free_place(self, _: object = None) -> None:
        with self._freed:
            self._taken -= 1
            self._freed.notify()

    def in_pool(self) -> bool:
        """Whether the calling thread is one of this pool's workers."""
        return threading.get_ident() in self._idents

    def submit(
        self, func: Callable[..., T], *args: Any, wait: bool, reserved: bool = False
    ) -> concurrent.futures.Future[T]:
        """Queue func(*args); wait=False raises HashingBusyError when the queue is full
        (`reserved`: the places kept for trusted logins count too)."""
        self._take_place(wait, reserved)
        try:
            future = self._executor.submit(func, *args)
        except RuntimeError:  # shut down
            self._free_place()
            raise
        # Also when the caller gave up (cancelled): the place is free once the job is.
        future.add_done_callback(self._free_place)
        return future

    async def run(self, func: Callable[..., T], *args: Any, reserved: bool = False) -> T:
        """func(*args) on the pool, awaited; HashingBusyError at once when the queue is full."""
        return await asyncio.wrap_future(self.submit(func, *args, wait=False, reserved=reserved))

    def call(self, func: Callable[..., T], *args: Any) -> T:
        """func(*args) on the pool from a blocking caller, waiting for a place if need be."""
        if self.in_pool():
            return func(*args)
        return self.submit(func, *args, wait=True).result()


@functools.cache
def default_hasher() -> PasswordHasher:
    """The process-wide hasher with argon2-cffi's recommended (RFC 9106 low-memory) costs.

    argon2-cffi and its C bindings (some 0.8 MiB) load here: a node without logins never
    hashes, and its settings only need this module's limits.
    """
    from argon2 import PasswordHasher

    return PasswordHasher()


@functools.cache
def default_pool() -> HashingPool:
    """The process-wide hashing pool (threads start at its first use)."""
    return HashingPool()


def hash_password(password: str, *, hasher: PasswordHasher | None = None) -> str:
    """Hash a password into a self-describing `$argon2id$...` string."""
    if not password:
        raise ValueError("password must not be empty")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValueError(f"password longer than {MAX_PASSWORD_LENGTH} characters")
    return (hasher or default_hasher()).hash(password)


def _verify(password_hash: str, password: str, hasher: PasswordHasher | None) -> bool:
    hasher = hasher or default_hasher()
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):  # a mismatch is a VerificationError
        return False


def verify_password(
    password_hash: str, password: str, *, hasher: PasswordHasher | None = None
) -> bool:
    """True when password matches the hash; False on mismatch or an unreadable hash.

    Blocking: the check runs on the default pool (waiting for a place), so call it from a
    worker thread; async code should await check_password() instead.
    """
    if not password or len(password) > MAX_PASSWORD_LENGTH:
        return False
    return default_pool().call(_verify, password_hash, password, hasher)


async def check_password(
    password_hash: str,
    password: str,
    *,
    hasher: PasswordHasher | None = None,
    pool: HashingPool | None = None,
    trusted: bool = False,
) -> bool:
    """verify_password() awaited on a pool; HashingBusyError when its queue is full
    (`trusted`: a login kmsgate can tell from a stranger's may take the reserved places)."""
    if not password or len(password) > MAX_PASSWORD_LENGTH:
        return False
    pool = pool or default_pool()
    return await pool.run(_verify, password_hash, password, hasher, reserved=trusted)


def needs_rehash(password_hash: str, *, hasher: PasswordHasher | None = None) -> bool:
    """True when the hash was made with other costs than the hasher's (rehash after login)."""
    hasher = hasher or default_hasher()
    from argon2.exceptions import InvalidHashError

    try:
        return hasher.check_needs_rehash(password_hash)
    except (InvalidHashError, ValueError):
        return True
