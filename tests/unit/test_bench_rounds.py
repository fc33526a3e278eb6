"""The benchmark's round plan: every side does the same work, and no side always goes first."""

from __future__ import annotations

import pytest

from bench.common import BUS, FASTSTREAM, RAW, Counter, abba, split


@pytest.mark.parametrize(("n", "rounds"), [(20_000, 4), (10, 4), (7, 3), (4, 4)])
def test_split_covers_every_event_once_in_nearly_equal_rounds(n: int, rounds: int) -> None:
    parts = split(n, rounds)
    assert sum(parts) == n and len(parts) == rounds
    assert max(parts) - min(parts) <= 1 and min(parts) > 0


def test_abba_alternates_who_goes_first_so_a_steady_drift_cancels() -> None:
    assert abba(4) == [(RAW, BUS), (BUS, RAW), (BUS, RAW), (RAW, BUS)]
    positions = {side: 0 for side in (RAW, BUS)}
    for order in abba(8):
        for i, side in enumerate(order):
            positions[side] += i
    assert positions[RAW] == positions[BUS]


def test_abba_with_three_sides_keeps_the_middle_one_at_the_average() -> None:
    plan = abba(4, (RAW, BUS, FASTSTREAM))
    assert plan[0] == (RAW, BUS, FASTSTREAM) and plan[1] == (FASTSTREAM, BUS, RAW)
    assert {order[1] for order in plan} == {BUS}
    assert sum(o.index(RAW) for o in plan) == sum(o.index(FASTSTREAM) for o in plan)


async def test_counter_until_returns_at_once_when_the_calls_already_came() -> None:
    counter = Counter(1 << 62)  # as the memory worker makes it: nothing sets `done` early
    for _ in range(300):
        counter.hit()
    await counter.until(300, timeout=1)  # the events were handled before anyone asked
    assert counter.count == 300
