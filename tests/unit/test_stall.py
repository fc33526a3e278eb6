"""The publisher's stall watchdog drops a connection only when confirms stopped for real, and
for every way of publishing: an event nacked and sent again keeps the clock running."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import aio_pika
import pytest
from pamqp.commands import Basic

from bus.produce import stall as stall_module
from bus.produce.publisher import Publisher
from bus.produce.stall import ConfirmClock, StallWatch
from bus.topology.model import from_dict


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


# -- the decision alone --------------------------------------------------------------------


def test_a_connection_that_confirms_nothing_for_the_stall_while_events_wait_is_dead() -> None:
    clock = ConfirmClock(5.0, now=0.0)
    clock.sent(now=10.0)
    assert clock.quiet(14.9, connected=True, blocked=False) is None
    assert clock.quiet(15.0, connected=True, blocked=False) == 5.0


def test_a_connection_that_nacks_everything_is_dead_sooner_than_a_silent_one() -> None:
    clock = ConfirmClock(5.0, now=0.0)
    clock.sent(now=0.0)
    for t in range(20):  # nacked, sent again, nacked again: every 100 ms
        clock.nacked()
        assert clock.quiet(t / 10, connected=True, blocked=False) is None
    assert clock.quiet(2.0, connected=True, blocked=False) == 2.0
    assert clock.nacks == 20


def test_a_nack_or_two_is_not_yet_a_dead_connection() -> None:
    """A quorum queue nacks while it elects a leader: a few nacks, then confirms."""
    clock = ConfirmClock(5.0, now=0.0)
    clock.sent(now=0.0)
    clock.nacked()
    clock.nacked()
    assert clock.quiet(4.9, connected=True, blocked=False) is None
    clock.confirmed(now=4.9)
    clock.nacked()
    clock.nacked()
    clock.nacked()
    assert clock.quiet(6.8, connected=True, blocked=False) is None  # nacks since: < 2 s
    assert clock.quiet(6.9, connected=True, blocked=False) == pytest.approx(2.0)


def test_one_event_resent_between_nacks_keeps_the_clock_running() -> None:
    """A one-at-a-time publisher has nothing in flight while it waits to send again: the event
    still waits, so the time still counts (it used to start afresh with every attempt)."""
    clock = ConfirmClock(5.0, now=0.0)
    clock.sent(now=0.0)  # the event's first publish; its resends are not new events
    for t in (0.5, 1.5):
        clock.nacked()
        assert clock.quiet(t, connected=True, blocked=False) is None
    clock.nacked()
    assert clock.quiet(2.5, connected=True, blocked=False) == 2.5


def test_any_confirm_is_progress_for_every_waiting_event() -> None:
    clock = ConfirmClock(5.0, now=0.0)
    clock.sent(now=0.0)
    clock.sent(now=1.0)
    clock.confirmed(now=4.0)
    clock.settled()
    assert clock.quiet(8.0, connected=True, blocked=False) is None
    assert clock.quiet(9.0, connected=True, blocked=False) == 5.0


def test_an_idle_closed_or_blocked_connection_is_never_dead_and_restarts_the_clock() -> None:
    clock = ConfirmClock(5.0, now=0.0)
    assert clock.quiet(100.0, connected=True, blocked=False) is None  # nothing waits
    clock.sent(now=100.0)
    assert clock.quiet(200.0, connected=False, blocked=False) is None  # reconnecting
    assert clock.quiet(204.0, connected=True, blocked=False) is None  # the time starts anew
    assert clock.quiet(300.0, connected=True, blocked=True) is None  # a broker alarm
    assert clock.quiet(304.0, connected=True, blocked=False) is None
    assert clock.quiet(305.0, connected=True, blocked=False) == 5.0
    assert ConfirmClock(None).quiet(1e9, connected=True, blocked=False) is None


def test_a_replaced_connection_gets_the_whole_time() -> None:
    clock = ConfirmClock(5.0, now=0.0)
    clock.sent(now=0.0)
    clock.nacked()
    assert clock.quiet(5.0, connected=True, blocked=False) == 5.0
    clock.restart(5.0)
    assert clock.nacks == 0
    assert clock.quiet(9.0, connected=True, blocked=False) is None


# -- the publisher tells it ------------------------------------------------------------------

TOPOLOGY = from_dict(
    {
        "version": 1,
        "exchanges": {"shop.events": {"type": "topic"}},
        "events": {"order.placed": {"exchange": "shop.events"}},
        "subscribers": {},
    },
    source="test",
)


async def test_a_publish_nacked_again_and_again_gets_its_connection_replaced() -> None:
    """`await pub.publish(...)` one at a time, every attempt nacked: the watchdog drops the
    connection within the stall (before, the clock started afresh with every resend and the
    application got PublishError at the deadline)."""
    conn = FakeConnection()
    pub = Publisher("amqp://unused", TOPOLOGY, deadline=30, stall=0.4)
    pub._connection = conn  # type: ignore[assignment]
    attempts: list[int] = []

    async def nacked(*args: Any) -> None:
        attempts.append(pub._stall.outstanding)
        if conn.closed_with:  # the new connection confirms
            pub._stall.confirmed()
            return
        await asyncio.sleep(0.02)
        pub._stall.nacked()
        raise aio_pika.exceptions.DeliveryError(None, Basic.Nack())  # type: ignore[arg-type]

    pub._publish = nacked  # type: ignore[method-assign,assignment]
    pub._stall.start()
    try:
        await asyncio.wait_for(pub.publish("order.placed", {"n": 1}), timeout=5)
    finally:
        await pub._stall.stop()
    # at least one drop; a second can come while the resend backs off (jittered, up to 2 s,
    # longer than this test's 0.4 s stall), since this fake stays "connected" after its close
    assert pub.stalls >= 1 and len(conn.closed_with) == pub.stalls
    assert set(attempts) == {1} and len(attempts) > 2, attempts
    assert pub._stall.outstanding == 0
