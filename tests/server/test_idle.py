"""IdleTimer: one deadline for a connection's idle timeout and its lifetime, in loop timers
shared by close deadlines (TimerSlots)."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest

from kmsgate.server.idle import IdleTimer, TimerSlots


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


async def test_timers_with_close_deadlines_share_one_loop_timer_and_none_fires_early(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    armed: list[float] = []
    call_at = loop.call_at

    def counting_call_at(
        when: float, callback: Any, *args: Any, **kwargs: Any
    ) -> asyncio.TimerHandle:
        armed.append(when)
        return call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    slots = TimerSlots(loop, width=0.2)
    fired: dict[int, float] = {}
    deadlines: dict[int, float] = {}
    timers = []
    for index in range(100):
        deadlines[index] = loop.time() + 0.1
        timers.append(IdleTimer(0.1, functools.partial(_note, fired, index, loop), slots=slots))
    # A hundred connections within a slot of 0.2 s: one or two loop timers, not a hundred.
    assert 1 <= len(armed) <= 2
    timers[7].cancel()
    await asyncio.sleep(0.6)
    assert sorted(fired) == [i for i in range(100) if i != 7]
    assert all(fired[i] >= deadlines[i] for i in fired)  # a slot fires at its end
    assert all(fired[i] <= deadlines[i] + 0.2 + 0.5 for i in fired)  # slack: loaded machine


async def test_a_timer_cancelled_while_its_slot_fires_calls_nothing() -> None:
    slots = TimerSlots(asyncio.get_running_loop(), width=0.05)
    seen: list[str] = []
    timers: dict[str, IdleTimer] = {}

    def goes_idle(name: str, other: str) -> None:
        seen.append(name)
        timers[other].cancel()  # as a connection its neighbour's idle handling closed

    # Same deadline, same slot: whichever fires first cancels the other.
    timers["a"] = IdleTimer(0.05, functools.partial(goes_idle, "a", "b"), slots=slots)
    timers["b"] = IdleTimer(0.05, functools.partial(goes_idle, "b", "a"), slots=slots)
    await asyncio.sleep(0.4)
    assert len(seen) == 1


async def test_a_touched_timer_moves_to_a_later_slot() -> None:
    calls = Calls()
    slots = TimerSlots(asyncio.get_running_loop(), width=0.05)
    timer = IdleTimer(0.3, calls.idle, slots=slots)
    await _touch_every(timer, 0.03, until=0.6)
    assert calls.seen == []
    await asyncio.sleep(0.8)
    assert [kind for kind, _ in calls.seen] == ["idle"]
    assert calls.seen[0][1] >= 0.5 + 0.3  # the last touch came after 0.5 s


def _note(fired: dict[int, float], index: int, loop: asyncio.AbstractEventLoop) -> None:
    fired[index] = loop.time()
