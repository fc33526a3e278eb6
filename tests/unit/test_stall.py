"""The publisher's stall watchdog drops a connection only when confirms stopped for real."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from bus.produce import stall as stall_module
from bus.produce.stall import StallWatch


class FakeConnection:
    """What the watchdog reads of a robust connection: is_closed, connected, transport."""

    def __init__(self) -> None:
        self.is_closed = False
        self.connected = asyncio.Event()
        self.connected.set()
        self.closed_with: list[BaseException] = []
        underlying = SimpleNamespace(is_closed=False, close=self._close)
        self.transport: Any = SimpleNamespace(connection=underlying)

    async def _close(self, exc: BaseException) -> None:
        self.closed_with.append(exc)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(stall_module.time, "monotonic", lambda: now[0])
    return now


def watch(conn: FakeConnection, flow: Any = None) -> tuple[StallWatch, list[str]]:
    dropped: list[str] = []
    w = StallWatch(
        5.0, lambda: conn, lambda: flow,  # type: ignore[arg-type,return-value]
        on_drop=lambda: dropped.append("dropped"), where=lambda: "rabbit@a",
    )  # fmt: skip
    return w, dropped


async def test_outstanding_publishes_without_a_confirm_for_the_stall_drop_the_connection(
    clock: list[float],
) -> None:
    conn = FakeConnection()
    w, dropped = watch(conn)
    w.sent()
    clock[0] += 5.0
    await w.check()
    assert w.stalls == 1 and dropped == ["dropped"]
    assert "no confirm for 5 s" in str(conn.closed_with[0])


async def test_a_confirm_within_the_stall_keeps_the_connection(clock: list[float]) -> None:
    conn = FakeConnection()
    w, _ = watch(conn)
    w.sent()
    w.sent()
    clock[0] += 4.0
    w.confirmed()
    w.settled()
    clock[0] += 4.0
    await w.check()
    assert w.stalls == 0 and not conn.closed_with and w.outstanding == 1


async def test_nothing_outstanding_is_never_a_stall(clock: list[float]) -> None:
    conn = FakeConnection()
    w, _ = watch(conn)
    w.sent()
    w.settled()  # nacked, and given up: a nack is no progress, but nothing waits now
    clock[0] += 60.0
    await w.check()
    assert w.stalls == 0


async def test_a_broker_alarm_stops_the_clock(clock: list[float]) -> None:
    conn = FakeConnection()
    flow = SimpleNamespace(blocked=True)
    w, _ = watch(conn, flow)
    w.sent()
    clock[0] += 60.0
    await w.check()  # blocked: the broker reads nothing, waiting is right
    assert w.stalls == 0
    flow.blocked = False
    clock[0] += 4.0
    await w.check()  # the clock restarted when the block was seen
    assert w.stalls == 0


async def test_a_closed_socket_stops_the_clock_the_robust_connection_keeps_its_own_time(
    clock: list[float],
) -> None:
    conn = FakeConnection()
    conn.transport = None  # between reconnect attempts
    w, _ = watch(conn)
    w.sent()
    clock[0] += 60.0
    await w.check()
    assert w.stalls == 0


async def test_the_first_publish_after_a_quiet_spell_starts_the_clock_afresh(
    clock: list[float],
) -> None:
    conn = FakeConnection()
    w, _ = watch(conn)
    clock[0] += 600.0  # idle for ten minutes
    w.sent()
    clock[0] += 1.0
    await w.check()
    assert w.stalls == 0


async def test_without_a_stall_it_counts_and_never_drops(clock: list[float]) -> None:
    conn = FakeConnection()
    w = StallWatch(None, lambda: conn, lambda: None, on_drop=lambda: None, where=str)  # type: ignore[arg-type,return-value]
    w.start()
    w.sent()
    clock[0] += 600.0
    await w.check()
    await w.stop()
    assert w.stalls == 0 and w.outstanding == 1
