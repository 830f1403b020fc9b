"""LogBudget: at most so many lines a second, the rest counted and said later."""

from __future__ import annotations

from kmsgate.observability.log_budget import LogBudget


def test_lines_over_the_budget_are_counted_until_the_next_second() -> None:
    now = [100.0]
    budget = LogBudget(3, clock=lambda: now[0])
    assert [budget.allow() for _ in range(5)] == [True, True, True, False, False]
    assert budget.suppressed == 2
    now[0] = 100.9  # the same second
    assert not budget.allow()
    now[0] = 101.0
    assert budget.allow()
    assert budget.take_suppressed() == 3
    assert budget.take_suppressed() == 0
