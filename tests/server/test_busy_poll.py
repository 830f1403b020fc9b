"""Busy polling after answers leave: while requests keep coming, and never on an idle host."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from kmsgate.config.settings import ServeSettings
from kmsgate.server.busy_poll import BusyPoll
from kmsgate.server.host import KmsHost
from kmsgate.server.outbox import AnswerOutbox
from tests.adversarial.host_attack import Serve
from tests.support.kms import activate_once
from tests.support.loops import Passes

BUDGET = 0.0005


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


def poller(budget: float = BUDGET) -> tuple[BusyPoll, Passes, Clock, list[int]]:
    loop, clock, activity = Passes(), Clock(), [0]
    poll = BusyPoll(loop, budget, lambda: activity[0], clock)  # type: ignore[arg-type]
    return poll, loop, clock, activity


def passes_until_it_stops(loop: Passes, clock: Clock) -> int:
    """Run the loop's passes 100 µs apart until polling ends; how many ran."""
    passes = 0
    while loop.run_pass():
        passes += 1
        clock.now += 0.0001
        assert passes < 100, "polling never ended"
    return passes


def test_a_kick_polls_until_a_budget_passes_without_requests() -> None:
    poll, loop, clock, _ = poller()
    poll.kick()
    assert poll.polling and len(loop.ready) == 1
    # Five passes of 100 µs fit in the 500 µs budget; the sixth sees it spent.
    assert passes_until_it_stops(loop, clock) == 6
    assert not poll.polling and not loop.ready


def test_requests_arriving_while_polling_extend_it_without_a_clock_read() -> None:
    # Saturated, every pass brings a request: the poll costs no clock read then. Once they
    # stop, the budget runs from the first pass that saw none.
    poll, loop, clock, activity = poller()
    poll.kick()
    reads = clock.reads
    for _ in range(20):  # 2 ms of passes, a request every pass: far past one budget
        activity[0] += 1
        assert loop.run_pass() == 1
        clock.now += 0.0001
    assert poll.polling and clock.reads == reads
    # The first quiet pass sets the end 500 µs on: five more passes of 100 µs reach it.
    assert passes_until_it_stops(loop, clock) == 6
    assert not poll.polling


def test_a_kick_while_polling_starts_no_second_chain() -> None:
    poll, loop, _, _ = poller()
    poll.kick()
    poll.kick()
    assert len(loop.ready) == 1
    loop.run_pass()
    poll.kick()
    assert len(loop.ready) == 1


def test_a_budget_of_zero_never_polls() -> None:
    poll, loop, _, _ = poller(budget=0.0)
    poll.kick()
    assert not poll.polling and not loop.ready


class Sender:
    def __init__(self) -> None:
        self.sent = 0

    def send_queued(self) -> None:
        self.sent += 1


async def test_the_outbox_kicks_after_a_flush_that_sent_answers() -> None:
    outbox = AnswerOutbox(asyncio.get_running_loop())
    kicks: list[int] = []
    outbox.on_sent = lambda: kicks.append(1)
    outbox.flush()  # nothing queued: nobody to hear from
    assert kicks == []
    sender = Sender()
    outbox.add(sender)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert sender.sent == 1 and kicks == [1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.mark.integration
@pytest.mark.parametrize("budget_us", ["500", "10000"])
async def test_a_serving_node_stops_polling_once_requests_stop(
    tmp_path: Path, budget_us: str
) -> None:
    # The promise: polling is bought with traffic. A poller that never stops would take the
    # whole core of an idle host; this one must leave it idle once the clients have gone.
    serve = Serve.start(tmp_path / "node", "--no-store", "--busy-poll", budget_us)
    try:
        for _ in range(50):
            assert (await activate_once(serve.port)).ok
        time.sleep(0.2)  # well past the budget
        before = cpu_seconds(serve.pid)
        time.sleep(1.0)
        idle_cpu = cpu_seconds(serve.pid) - before
        # Polling through that second would cost ~1 s; the idle loop's own timers, a tick.
        assert idle_cpu < 0.3, idle_cpu
    finally:
        serve.stop()


def test_busy_poll_is_an_option_with_its_bounds() -> None:
    settings: Any = ServeSettings(busy_poll=0)
    assert settings.busy_poll == 0
    assert ServeSettings().busy_poll == 500
    with pytest.raises(ValueError):
        ServeSettings(busy_poll=-1)


async def _polled_while_activating(budget_us: int) -> tuple[bool, KmsHost]:
    """Activate once against an in-process host, watching its poller on every loop pass."""
    seen_polling = False
    settings = ServeSettings(listen=["127.0.0.1:0"], busy_poll=budget_us)
    async with KmsHost(settings) as host:
        assert host.busy_poll is not None
        watching = True

        async def watch() -> None:
            nonlocal seen_polling
            while watching:
                seen_polling = seen_polling or host.busy_poll.polling  # type: ignore[union-attr]
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        for _ in range(3):
            assert (await activate_once(host.port)).ok
        watching = False
        await watcher
        deadline = time.monotonic() + 5
        while host.busy_poll.polling:
            assert time.monotonic() < deadline, "polling went on without requests"
            await asyncio.sleep(0.001)
    return seen_polling, host


@pytest.mark.integration
async def test_a_host_polls_after_its_answers_leave_and_then_stops() -> None:
    polled, _ = await _polled_while_activating(10000)
    assert polled


@pytest.mark.integration
async def test_a_host_told_not_to_poll_never_does() -> None:
    polled, _ = await _polled_while_activating(0)
    assert not polled
