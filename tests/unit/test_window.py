"""The publish window: items in order, at most *size* in flight, given up only without progress."""

from __future__ import annotations

import asyncio

from bus.produce.window import Window


async def test_every_item_runs_in_order_with_at_most_size_in_flight() -> None:
    started: list[int] = []
    busy = peak = 0

    async def work(i: int) -> None:
        nonlocal busy, peak
        started.append(i)
        busy += 1
        peak = max(peak, busy)
        await asyncio.sleep(0)
        busy -= 1

    window = Window(8, work, 100)
    assert await window.watched(5.0)
    assert started == list(range(100))
    assert peak <= 8
    assert window.done == 100 and not window.errors


async def test_a_failing_item_is_kept_and_the_others_go_on() -> None:
    async def work(i: int) -> None:
        if i in (7, 3):
            raise ValueError(f"item {i}")

    window = Window(4, work, 10)
    assert await window.watched(5.0)
    assert window.done == 8
    assert [str(e) for e in window.failures] == ["item 3", "item 7"], "in item order"
    assert all(window.finished(i) for i in range(10))


async def test_no_finish_for_the_deadline_gives_up_cancelling_what_is_in_flight() -> None:
    silent = asyncio.Event()
    cancelled: list[int] = []

    async def work(i: int) -> None:
        if i == 2:  # the broker never answers this one
            try:
                await silent.wait()
            except asyncio.CancelledError:
                cancelled.append(i)
                raise

    window = Window(2, work, 5)
    assert not await window.watched(0.2)
    assert cancelled == [2]
    assert [window.finished(i) for i in range(5)] == [True, True, False, True, True]
    assert window.done == 4 and not window.errors, "the silent one is neither done nor failed"


async def test_while_paused_the_deadline_does_not_run() -> None:
    answer = asyncio.Event()
    paused = True

    async def work(i: int) -> None:
        await answer.wait()

    async def unpause_later() -> None:
        nonlocal paused
        await asyncio.sleep(0.5)  # five deadlines
        paused = False
        answer.set()

    window = Window(4, work, 3)
    unpausing = asyncio.create_task(unpause_later())
    assert await window.watched(0.1, paused=lambda: paused)
    await unpausing
    assert window.done == 3


async def test_cancelling_the_watch_cancels_every_item_in_flight() -> None:
    cancelled = 0
    forever = asyncio.Event()

    async def work(i: int) -> None:
        nonlocal cancelled
        try:
            await forever.wait()
        except asyncio.CancelledError:
            cancelled += 1
            raise

    window = Window(3, work, 10)
    watching = asyncio.create_task(window.watched(60.0))
    await asyncio.sleep(0.05)
    watching.cancel()
    await asyncio.gather(watching, return_exceptions=True)
    assert cancelled == 3, "the three in flight; the other seven never started"
    assert not any(window.finished(i) for i in range(10))
