"""IdleTimer: one timer for a connection's idle timeout and its lifetime."""

from __future__ import annotations

import asyncio

from kmsgate.server.idle import IdleTimer


class Calls:
    def __init__(self) -> None:
        self.seen: list[tuple[str, float]] = []
        self.loop = asyncio.get_running_loop()
        self.start = self.loop.time()

    def idle(self) -> None:
        self.seen.append(("idle", self.loop.time() - self.start))

    def lifetime(self) -> None:
        self.seen.append(("lifetime", self.loop.time() - self.start))


async def _touch_every(timer: IdleTimer, period: float, until: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + until
    while loop.time() < end:
        timer.touch()
        await asyncio.sleep(period)


async def test_an_untouched_connection_goes_idle_once() -> None:
    calls = Calls()
    IdleTimer(0.1, calls.idle, lifetime=5.0, on_lifetime=calls.lifetime)
    await asyncio.sleep(0.4)
    assert [kind for kind, _ in calls.seen] == ["idle"]
    assert calls.seen[0][1] >= 0.1


async def test_activity_postpones_idleness_but_not_the_lifetime() -> None:
    calls = Calls()
    # Touches 0.03 s apart against a 0.6 s timeout: a loaded test machine may delay one
    # by half a second without the connection looking idle.
    timer = IdleTimer(0.6, calls.idle, lifetime=0.9, on_lifetime=calls.lifetime)
    await _touch_every(timer, 0.03, until=1.2)
    # Busy throughout: never idle, closed once for its age, at its age.
    assert [kind for kind, _ in calls.seen] == ["lifetime"]
    assert calls.seen[0][1] >= 0.9


async def test_no_lifetime_means_only_idleness_ends_it() -> None:
    calls = Calls()
    timer = IdleTimer(0.6, calls.idle, lifetime=0.0, on_lifetime=calls.lifetime)
    await _touch_every(timer, 0.03, until=0.9)
    assert calls.seen == []
    await asyncio.sleep(1.0)
    assert [kind for kind, _ in calls.seen] == ["idle"]


async def test_the_idle_deadline_before_the_lifetime_wins() -> None:
    calls = Calls()
    IdleTimer(0.1, calls.idle, asyncio.get_running_loop(), lifetime=0.3, on_lifetime=calls.lifetime)
    await asyncio.sleep(0.5)
    assert [kind for kind, _ in calls.seen] == ["idle"]


async def test_a_cancelled_timer_calls_nothing() -> None:
    calls = Calls()
    timer = IdleTimer(0.05, calls.idle, lifetime=0.1, on_lifetime=calls.lifetime)
    timer.cancel()
    timer.cancel()  # twice is harmless (connection_lost after a close)
    await asyncio.sleep(0.3)
    assert calls.seen == []
