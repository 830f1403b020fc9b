"""LoginSlots: at most N account checks at once, a trusted login served before every stranger."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from kmsgate.web.login_slots import LoginSlots


async def _holders(
    slots: LoginSlots, count: int
) -> tuple[list[asyncio.Event], list[asyncio.Task[None]]]:
    releases = [asyncio.Event() for _ in range(count)]

    async def hold(release: asyncio.Event) -> None:
        async with slots.turn(trusted=False):
            await release.wait()

    tasks = [asyncio.create_task(hold(release)) for release in releases]
    await asyncio.sleep(0)
    return releases, tasks


def test_a_trusted_login_takes_the_first_free_turn_before_earlier_strangers() -> None:
    async def run() -> list[str]:
        slots = LoginSlots(2)
        releases, holders = await _holders(slots, 2)
        order: list[str] = []

        async def login(name: str, trusted: bool) -> None:
            async with slots.turn(trusted=trusted):
                order.append(name)

        waiting = [asyncio.create_task(login(f"stranger-{i}", False)) for i in range(5)]
        await asyncio.sleep(0)
        waiting.append(asyncio.create_task(login("alice", True)))
        await asyncio.sleep(0)
        assert slots.waiting == 6
        for release in releases:
            release.set()
        await asyncio.gather(*holders, *waiting)
        return order

    assert asyncio.run(run()) == ["alice"] + [f"stranger-{i}" for i in range(5)]


def test_a_cancelled_waiter_gives_its_turn_to_the_next() -> None:
    async def run() -> list[str]:
        slots = LoginSlots(1)
        order: list[str] = []

        async def login(name: str) -> None:
            async with slots.turn(trusted=True):
                order.append(name)

        async with slots.turn(trusted=False):
            gone = asyncio.create_task(login("gone"))
            kept = asyncio.create_task(login("kept"))
            await asyncio.sleep(0)
        # the turn was handed to "gone" on leaving; cancelled before it runs, it must pass
        # the turn on to "kept"
        gone.cancel()
        await asyncio.wait_for(kept, 5)
        assert gone.cancelled()
        assert (slots.waiting, slots.free) == (0, 1)
        return order

    assert asyncio.run(run()) == ["kept"]


@settings(max_examples=60, deadline=None)
@given(
    turns=st.integers(1, 4),
    logins=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=20),
)
def test_never_more_than_the_turns_at_once_and_every_login_served(
    turns: int, logins: list[tuple[bool, bool]]
) -> None:
    # (trusted, cancelled early) per login; the promise holds whatever the mix.
    async def run() -> tuple[int, int, int, int]:
        slots = LoginSlots(turns)
        inside = peak = served = 0

        async def login(trusted: bool) -> None:
            nonlocal inside, peak, served
            async with slots.turn(trusted=trusted):
                inside += 1
                peak = max(peak, inside)
                try:
                    await asyncio.sleep(0)
                finally:
                    inside -= 1
                served += 1

        tasks = [asyncio.create_task(login(trusted)) for trusted, _ in logins]
        await asyncio.sleep(0)
        for task, (_, cancel) in zip(tasks, logins, strict=True):
            if cancel:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        cancelled = sum(task.cancelled() for task in tasks)
        return peak, served + cancelled, slots.waiting, slots.free

    peak, accounted, waiting, free = asyncio.run(run())
    assert peak <= turns
    assert accounted == len(logins)
    assert (waiting, free) == (0, turns)  # every turn handed back, cancelled or not
