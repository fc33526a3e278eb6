"""What every scenario shares: counts, result rows, a per-run topology, and raw aio-pika helpers.

Each scenario declares its own uniquely named exchange and queues (prefix ``bench<hex>``) and
deletes them afterwards. Objects are declared directly from the planner's desired list; the
applier is not used because it records what it owns in the broker-wide state queue, which a
throwaway benchmark topology must not touch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractExchange, AbstractRobustConnection
from pydantic import BaseModel

from bus.consume.router import Router
from bus.envelope import Event, encode
from bus.produce.frames import to_properties
from bus.topology.model import Topology, from_dict
from bus.topology.plan import (
    BindingDecl,
    ExchangeBindingDecl,
    ExchangeDecl,
    QueueDecl,
    Role,
    desired,
    is_delay_object,
)
from bus.topology.records import state_queue

EMPTY = Router()  # topology files name a handlers module; the runtimes get their router directly


# -- counts and results --------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    """How much work each scenario does. `SMOKE` keeps a whole run under a minute."""

    publish: int = 20_000
    window: int = 1_000
    consume: int = 20_000
    fanout: int = 10_000
    rate: int = 500
    seconds: float = 10.0
    retry: int = 5_000
    mem_small: int = 10_000
    mem_large: int = 100_000
    rounds: int = 4  # each scenario's work is split into rounds taken in ABBA order
    outbox: int = 20_000  # rows the relay moves, per database
    api_rate: int = 200  # orders per second POSTed to the orders API
    api_seconds: float = 30.0
    saga: int = 2_000  # events per side of the saga scenario, per store and prefetch
    saga_instances: int = 1_000  # live saga instances the saga scenario's events spread over
    history: int = 100_000  # events in the log the history scenario reads, replays, backfills
    ordering: int = 5_000  # events per side of the ordering scenario


SMOKE = Counts(
    publish=300, window=50, consume=500, fanout=200, rate=200, seconds=1.0, retry=100,
    mem_small=300, mem_large=1_500, rounds=2, outbox=300, api_rate=50, api_seconds=2.0,
    saga=60, saga_instances=20,
    history=300,
    ordering=400,
)  # fmt: skip

BUS, RAW, FASTSTREAM = "bus", "raw", "faststream"
# what a user writes from aio-pika's docs (bench.naive): with the bus's envelope, and bare
NAIVE, NAIVE_BARE = "naive", "naive_bare"


def abba(rounds: int, sides: Sequence[str] = (RAW, BUS)) -> list[tuple[str, ...]]:
    """The order of the sides in each round: A-B, B-A, B-A, A-B, ... (with a third side,
    A-B-C, C-B-A, C-B-A, A-B-C: the middle one sits at the average of the others).

    This machine's speed drifts by tens of percent within minutes (other tenants, CPU
    frequency); alternating the order cancels a steady drift, and many short rounds average
    the bursts, where one long run of each side would hand the whole drift to one of them.
    """
    forward, backward = tuple(sides), tuple(reversed(sides))
    return [forward if r % 4 in (0, 3) else backward for r in range(rounds)]


def split(n: int, rounds: int) -> list[int]:
    """*n* events in *rounds* nearly equal parts (none empty when n >= rounds)."""
    return [n // rounds + (1 if r < n % rounds else 0) for r in range(rounds)]


@dataclass(frozen=True)
class Env:
    """Where and how a scenario runs."""

    url: str
    counts: Counts
    queue_type: str = "quorum"
    prefetch: int = 32
    faststream: bool = False  # measure FastStream too (the `bench` extra is installed)

    @property
    def sides(self) -> tuple[str, ...]:
        return (RAW, BUS, FASTSTREAM) if self.faststream else (RAW, BUS)


@dataclass
class Row:
    """One line of the results table: the same work done by the bus, by tuned raw aio-pika and
    (where measured) by the naive aio-pika user's code."""

    scenario: str
    metric: str
    unit: str
    bus: float
    raw: float
    higher_is_better: bool
    target: str = ""  # e.g. "bus/raw >= 1.0"; empty: no target
    passed: bool | None = None
    faststream: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    naive: float | None = None  # bench.naive with the bus's envelope
    naive_bare: float | None = None  # bench.naive with bare messages
    # the metric of each side in each round (events/s of that round's share): the spread
    rounds: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """bus / raw of the metric as measured (events/s, ms, %)."""
        return self.bus / self.raw if self.raw else float("nan")

    @property
    def naive_ratio(self) -> float | None:
        """bus / naive (full envelope), when the naive side was measured."""
        return self.bus / self.naive if self.naive else None

    def as_json(self) -> dict[str, Any]:
        naive = self.naive_ratio
        return {**asdict(self), "ratio": round(self.ratio, 4),
                "naive_ratio": None if naive is None else round(naive, 4)}  # fmt: skip

    def judge(self, vs: str, limit: float, *, at_least: bool) -> None:
        """Set the target: bus/<vs> >= limit (or <= with at_least=False)."""
        ref = self.naive if vs == NAIVE else self.raw
        self.target = f"bus/{vs} {'>=' if at_least else '<='} {limit:g}"
        ratio = self.bus / ref if ref else float("nan")
        self.passed = bool(ref) and (ratio >= limit if at_least else ratio <= limit)


def min_ratio(bus: float, raw: float, limit: float) -> tuple[str, bool]:
    return f"bus/raw >= {limit:g}", raw > 0 and bus / raw >= limit


def max_ratio(bus: float, raw: float, limit: float) -> tuple[str, bool]:
    return f"bus/raw <= {limit:g}", raw > 0 and bus / raw <= limit


def rate_row(
    scenario: str, metric: str, n: int, bus_s: float, raw_s: float, target: float | None = None
) -> Row:
    """A throughput row (events/s, higher is better) from two elapsed times for *n* events."""
    bus, raw = n / bus_s, n / raw_s
    text, ok = min_ratio(bus, raw, target) if target is not None else ("", None)
    return Row(scenario, metric, "events/s", bus, raw, True, text, ok)


def side_rates(
    scenario: str, metric: str, n: int, seconds: dict[str, float], per_round: dict[str, list[float]]
) -> Row:
    """A throughput row from each side's seconds for *n* events (sides not measured: None),
    with each round's rate (*per_round*: events of the round / its seconds) for the spread."""

    def rate(side: str) -> float | None:
        return n / seconds[side] if seconds.get(side) else None

    row = Row(scenario, metric, "events/s", rate(BUS) or 0.0, rate(RAW) or 0.0, True,
              faststream=rate(FASTSTREAM), naive=rate(NAIVE), naive_bare=rate(NAIVE_BARE),
              rounds=per_round)  # fmt: skip
    return row


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(p * 10) - 1]


# -- the event every scenario sends --------------------------------------------------------


class Item(BaseModel):
    sku: str
    quantity: int


class Order(BaseModel):
    order_id: str
    customer: str
    total: float
    items: list[Item]


def order(i: int) -> dict[str, Any]:
    return {
        "order_id": f"o-{i}",
        "customer": "Ada Lovelace",
        "total": 42.5,
        "items": [{"sku": "BOOK-1", "quantity": 2}, {"sku": "PEN-7", "quantity": 1}],
    }


# -- per-run topology ----------------------------------------------------------------------


def new_prefix() -> str:
    return f"bench{uuid.uuid4().hex[:8]}"


def topology(
    prefix: str,
    subscribers: dict[str, list[str]],
    event_types: Sequence[str],
    *,
    queue_type: str,
    prefetch: int,
    delays: Sequence[str] = ("1h",),
) -> Topology:
    """One topic exchange `<prefix>.events`; each subscriber binds the given routing keys."""
    doc = topology_doc(
        prefix, subscribers, event_types, queue_type=queue_type, prefetch=prefetch, delays=delays
    )
    return from_dict(doc, source=f"bench:{prefix}")


def topology_doc(
    prefix: str,
    subscribers: dict[str, list[str]],
    event_types: Sequence[str],
    *,
    queue_type: str,
    prefetch: int,
    delays: Sequence[str] = ("1h",),
) -> dict[str, Any]:
    """The topology file (as data) behind `topology`."""
    exchange = f"{prefix}.events"
    return {
        "version": 1,
        "defaults": {
            "queue_type": queue_type,
            "prefetch": prefetch,
            "retry": {"delays": list(delays)},
        },
        "exchanges": {exchange: {"type": "topic"}},
        "events": {t: {"exchange": exchange} for t in event_types},
        "subscribers": {
            name: {
                "handlers": "bench.common:EMPTY",
                "queue": f"{prefix}.{name}",
                "bindings": [{"exchange": exchange, "keys": keys}],
            }
            for name, keys in subscribers.items()
        },
    }


@contextlib.asynccontextmanager
async def declared(url: str, topo: Topology) -> AsyncIterator[Topology]:
    """Declare every exchange, queue and binding of *topo*; delete them all afterwards (not
    the delay levels: no benchmark delays, and they are the whole vhost's)."""
    want = [d for d in desired(topo) if not is_delay_object(d)]
    conn = await aio_pika.connect(url)
    try:
        channel = await conn.channel()
        raw = await channel.get_underlay_channel()
        for d in want:
            if isinstance(d, ExchangeDecl):
                await channel.declare_exchange(
                    d.name, d.type, durable=True, arguments=dict(d.arguments)
                )
            elif isinstance(d, QueueDecl):
                await channel.declare_queue(d.name, durable=True, arguments=dict(d.arguments))
        for d in want:
            if isinstance(d, BindingDecl):
                await raw.queue_bind(
                    d.queue, d.exchange, routing_key=d.routing_key, arguments=dict(d.arguments)
                )
            elif isinstance(d, ExchangeBindingDecl):  # an ordered subscriber's partition exchange
                await raw.exchange_bind(d.destination, d.source, routing_key=d.routing_key)
        await channel.close()
        yield topo
    finally:
        for d in want:
            channel = await conn.channel()
            with contextlib.suppress(aiormq.exceptions.AMQPError):
                raw = await channel.get_underlay_channel()
                if isinstance(d, QueueDecl):
                    await raw.queue_delete(d.name)
                    if d.role is Role.PARTITION:  # the partition's report, written by its owner
                        await raw.queue_delete(state_queue(d.name))
                elif isinstance(d, ExchangeDecl):
                    await raw.exchange_delete(d.name)
            if not channel.is_closed:
                await channel.close()
        await conn.close()


async def purge(url: str, *queues: str) -> None:
    conn = await aio_pika.connect(url)
    try:
        channel = await conn.channel()
        raw = await channel.get_underlay_channel()
        for q in queues:
            await raw.queue_purge(q)
    finally:
        await conn.close()


async def queue_depth(url: str, queue: str) -> int:
    conn = await aio_pika.connect(url)
    try:
        channel = await conn.channel()
        q = await channel.declare_queue(queue, passive=True)
        return int(q.declaration_result.message_count or 0)
    finally:
        await conn.close()


# -- raw aio-pika: what a careful developer writes without the bus -------------------------


def hand_made_envelope(event_type: str) -> tuple[str, datetime, dict[str, Any]]:
    """Id, time and headers of the bus's wire format (CloudEvents headers,
    traceparent), made the way a producer following that contract by hand would."""
    event_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    trace, span = random.getrandbits(128), random.getrandbits(64)
    headers = {
        "cloudEvents_specversion": "1.0",
        "cloudEvents_id": event_id,
        "cloudEvents_source": "bench",
        "cloudEvents_type": event_type,
        "cloudEvents_time": now.isoformat().replace("+00:00", "Z"),
        "traceparent": f"00-{trace:032x}-{span:016x}-01",
    }
    return event_id, now, headers


class Windowed:
    """`publish_window` over a subclass's awaited `publish`: what hand-written bulk publishing
    does (a semaphore of confirms in flight)."""

    async def publish(self, routing_key: str, data: Any) -> None:
        raise NotImplementedError

    async def publish_window(self, routing_key: str, items: Sequence[Any], window: int) -> None:
        """Publish all *items* with at most *window* confirms outstanding."""
        gate = asyncio.Semaphore(window)

        async def one(data: Any) -> None:
            async with gate:
                await self.publish(routing_key, data)

        await asyncio.gather(*(one(d) for d in items))


class RawPublisher(Windowed):
    """Raw aio-pika publishing: one robust connection, a confirm channel, mandatory, persistent."""

    def __init__(self, url: str, exchange: str) -> None:
        self.url = url
        self.exchange_name = exchange
        self.connection: AbstractRobustConnection | None = None
        self.exchange: AbstractExchange | None = None

    async def __aenter__(self) -> RawPublisher:
        self.connection = await aio_pika.connect_robust(self.url)
        channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        self.exchange = await channel.get_exchange(self.exchange_name, ensure=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.connection is not None:
            await self.connection.close()

    async def publish(self, routing_key: str, data: Any) -> None:
        """Awaits the broker's confirm. The message has the bus's wire format (id,
        type, source, timestamp, CloudEvents headers, traceparent), hand-built the way an
        aio-pika producer following that contract would: the same work, without the bus."""
        assert self.exchange is not None
        event_id, now, headers = hand_made_envelope(routing_key)
        message = aio_pika.Message(
            json.dumps(data, separators=(",", ":")).encode(),
            message_id=event_id,
            type=routing_key,
            app_id="bench",
            timestamp=now,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=headers,
        )
        await self.exchange.publish(message, routing_key=routing_key, mandatory=True)


async def fill(
    url: str, exchange: str, routing_key: str, n: int, data: Callable[[int], Any] = order
) -> None:
    """Put *n* bus-encoded events on *exchange* (untimed setup), 500 confirms in flight."""
    conn = await aio_pika.connect(url)
    try:
        channel = await conn.channel(publisher_confirms=True)
        underlay = await channel.get_underlay_channel()
        gate = asyncio.Semaphore(500)

        async def one(i: int) -> None:
            async with gate:
                wire = encode(Event(type=routing_key, data=data(i), source="bench"))
                await underlay.basic_publish(
                    wire.body, exchange=exchange, routing_key=routing_key,
                    properties=to_properties(wire),
                )  # fmt: skip

        await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await conn.close()


class Counter:
    """Counts handler calls; `done` is set when the expected number arrived. `first` and `last`
    are the `perf_counter()` of the first and the latest call."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.done = asyncio.Event()
        self.first = 0.0
        self.last = 0.0

    def hit(self) -> None:
        self.last = time.perf_counter()
        if self.count == 0:
            self.first = self.last
        self.count += 1
        if self.count >= self.expected:
            self.done.set()

    @property
    def busy_seconds(self) -> float:
        """From the first call to the last: the steady-state work, without connecting and
        declaring (which would weigh more on the side that opens more channels)."""
        return self.last - self.first

    async def until(self, target: int, timeout: float) -> None:
        """Wait until *target* calls were counted in all (at once if they already were)."""
        self.expected = target
        if self.count >= target:  # `done` may never have been set: the calls came first
            return
        self.done.clear()
        await self.wait(timeout)

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.done.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"only {self.count} of {self.expected} events handled within {timeout:.0f}s"
            ) from None


async def timed(work: Awaitable[Any]) -> float:
    started = time.perf_counter()
    await work
    return time.perf_counter() - started


def deadline_for(n: int) -> float:
    """A generous timeout for handling *n* events (never a measurement, only a guard)."""
    return 30.0 + n / 200
