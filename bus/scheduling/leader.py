"""`bus scheduler`: fire the topology's `schedules:`, any number of replicas, one leader at a time.

Leadership comes from RabbitMQ itself: the leader is the one connection that declared the
exclusive classic queue `bus.scheduler.lock`. The broker deletes an exclusive queue when its
connection dies, so a waiting replica (retrying every ~1 s, with jitter) takes over within
about a second of a crash. A failed declaration (405 RESOURCE_LOCKED) closes only the channel
it was made on, so each attempt uses a fresh one.

The leader publishes every firing with the id ``schedule:<name>:<instant>`` and records the
last fired instant of each schedule as the one message of the durable classic queue
`<lock>.state`, after each confirm. A new leader resumes after the recorded instants, so a
failover loses nothing and repeats at most the firing in flight when the old leader died;
that copy carries the same id and the idempotency store absorbs it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from urllib.parse import urlsplit, urlunsplit

import aiormq
from aio_pika.abc import AbstractConnection
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from bus.amqp import plumbing
from bus.amqp.connection import connect_plain
from bus.amqp.plumbing import close_quietly
from bus.envelope import Event, new_traceparent
from bus.errors import BrokerUnavailable, BusError, ConfigError, PublishError, UnroutableError
from bus.metrics import Metrics
from bus.produce.publisher import Publisher
from bus.scheduling.firings import HANDOVER_MS, due, event_id, instant_text, next_firing
from bus.settings import DEFAULT_SCHEDULER_LOCK
from bus.topology.model import Schedule, Topology

log = logging.getLogger(__name__)

DEFAULT_LOCK_QUEUE = DEFAULT_SCHEDULER_LOCK
RETRY_SECONDS = 1.0  # a non-leader tries to take the lock this often (±25 % jitter)
MAX_SLEEP = 1.0  # the leader re-checks its lock and the clock at least this often
HEARTBEAT = 5  # seconds: a frozen or cut-off leader is dropped by the broker after ~2 of these
_BROKEN = (aiormq.exceptions.AMQPError, ConnectionError, asyncio.TimeoutError, RuntimeError)


@dataclass(frozen=True)
class SchedulerMetrics:
    firings: Counter
    leader: Gauge
    bus: Metrics


@cache
def scheduler_metrics(registry: CollectorRegistry) -> SchedulerMetrics:
    """The scheduler's metrics on *registry*, created once per registry."""
    return SchedulerMetrics(
        firings=Counter(
            "bus_scheduler_firings_total",
            "Scheduled events published (confirmed), by schedule",
            ["schedule"],
            registry=registry,
        ),
        leader=Gauge("bus_scheduler_leader", "1 while this replica leads", registry=registry),
        bus=Metrics.default() if registry is REGISTRY else Metrics(registry),
    )


class Scheduler:
    """Campaign for the lock, and while leading fire every schedule. `await run(stop)`."""

    def __init__(
        self,
        url: str,
        topology: Topology,
        *,
        lock_queue: str = DEFAULT_LOCK_QUEUE,
        registry: CollectorRegistry | None = None,
        handover_ms: int = HANDOVER_MS,
    ) -> None:
        self.url = url
        self.topology = topology
        self.schedules = topology.schedules()
        self.lock_queue = lock_queue
        self.state_queue = f"{lock_queue}.state"
        self.handover_ms = handover_ms
        self.registry = registry if registry is not None else REGISTRY
        self.metrics = scheduler_metrics(self.registry)
        self.connected = False
        self.leader = False
        self._next: dict[str, tuple[datetime, datetime]] = {}

    def check(self) -> None:
        """Raise when a schedule's event or data is wrong, or its cron matches no date."""
        publisher = Publisher(self.url, self.topology, metrics=self.metrics.bus)
        now = datetime.now(UTC)
        for s in self.schedules:
            publisher.check(s.event, s.data)
            try:
                next_firing(s, now)
            except ValueError as exc:
                raise ConfigError(f"schedules.{s.name}: {exc}") from None

    async def run(self, stop: asyncio.Event) -> None:
        """Until *stop*: connect, campaign, lead; on a broken connection start over."""
        first = True
        while not stop.is_set():
            try:
                conn = await connect_plain(with_heartbeat(self.url), "scheduler")
            except BrokerUnavailable as exc:
                if first:
                    raise
                log.warning("%s; retrying", exc)
                await _wait_any(RETRY_SECONDS * 2, stop)
                continue
            first = False
            lost = asyncio.Event()
            conn.close_callbacks.add(_setter(lost))
            self.connected = True
            try:
                if await self._campaign(conn, stop, lost):
                    await self._lead(conn, stop, lost)
            except (*_BROKEN, BusError) as exc:
                log.warning("scheduler connection broke (%s: %s); reconnecting", _name(exc), exc)
            finally:
                self.connected = False
                self._set_leader(False)
                # closing deletes the exclusive lock queue: the next replica takes over at once
                await close_quietly(conn)

    async def _campaign(
        self, conn: AbstractConnection, stop: asyncio.Event, lost: asyncio.Event
    ) -> bool:
        """Try to declare the lock queue until it works (True) or *stop*/*lost* (False)."""
        waiting_logged = False
        while not stop.is_set() and not lost.is_set():
            channel = await conn.channel(publisher_confirms=False)
            try:
                await channel.declare_queue(
                    self.lock_queue,
                    exclusive=True,
                    durable=False,
                    arguments={"x-queue-type": "classic"},
                )
                return True
            except aiormq.exceptions.ChannelLockedResource:
                if not waiting_logged:
                    log.info("another replica leads (%s is locked); standing by", self.lock_queue)
                    waiting_logged = True
                await close_quietly(channel)  # the broker closed it already; tidy our side
            await _wait_any(RETRY_SECONDS * random.uniform(0.75, 1.25), stop, lost)
        return False

    async def _lead(
        self, conn: AbstractConnection, stop: asyncio.Event, lost: asyncio.Event
    ) -> None:
        self._set_leader(True)
        names = ", ".join(s.name for s in self.schedules) or "none"
        log.info("leading: firing %d schedule(s): %s", len(self.schedules), names)
        record = await read_record(conn, self.state_queue)
        handled: dict[str, datetime] = dict(record)
        pub = Publisher(
            self.url, self.topology, source="bus-scheduler", deadline=5.0, metrics=self.metrics.bus
        )
        async with pub:
            while not stop.is_set() and not lost.is_set():
                if not await self._still_leader(conn):
                    log.warning("lock queue %s is gone: stepping down", self.lock_queue)
                    lost.set()
                    break
                now = datetime.now(UTC)
                if await self._fire_due(pub, conn, now, handled, record):
                    self._skip_to(now, handled)
                    pause = self._sleep_seconds(handled)
                else:
                    pause = MAX_SLEEP  # a firing failed: try it again shortly
                await _wait_any(pause, stop, lost)
        log.info("stepped down")

    async def _fire_due(
        self,
        pub: Publisher,
        conn: AbstractConnection,
        now: datetime,
        handled: dict[str, datetime],
        record: dict[str, datetime],
    ) -> bool:
        """Fire what is due at *now*, recording each; False when one could not be published."""
        for at, s in self._due(handled, now):
            if not await self._fire(pub, s, at):
                return False
            handled[s.name] = record[s.name] = at
            await write_record(conn, self.state_queue, record)
        return True

    def _skip_to(self, now: datetime, handled: dict[str, datetime]) -> None:
        """After a batch, every instant up to *now* is fired or was deliberately skipped: move
        schedules that fired nothing (a fresh start, missed firings outside the window) to now."""
        for s in self.schedules:
            last = handled.get(s.name)
            if last is None or self._next_after(s, last) <= now:
                handled[s.name] = now

    def _due(self, handled: dict[str, datetime], now: datetime) -> list[tuple[datetime, Schedule]]:
        batch = []
        for s in self.schedules:
            last = handled.get(s.name)
            if last is not None and self._next_after(s, last) > now:
                continue  # the common case, without computing anything
            instants = due(s, last, now, handover_ms=self.handover_ms)
            if instants and (now - instants[0]).total_seconds() > MAX_SLEEP:
                log.info(
                    "catching up %d firing(s) of %s from %s",
                    len(instants), s.name, instant_text(instants[0]),
                )  # fmt: skip
            batch += [(at, s) for at in instants]
        return sorted(batch, key=lambda item: (item[0], item[1].name))

    def _next_after(self, schedule: Schedule, after: datetime) -> datetime:
        """`next_firing`, cached until *after* changes (a cron scan costs milliseconds)."""
        cached = self._next.get(schedule.name)
        if cached is None or cached[0] != after:
            cached = self._next[schedule.name] = (after, next_firing(schedule, after))
        return cached[1]

    def _sleep_seconds(self, handled: dict[str, datetime]) -> float:
        now = datetime.now(UTC)
        upcoming = [self._next_after(s, handled.get(s.name, now)) for s in self.schedules]
        if not upcoming:
            return MAX_SLEEP
        return max(0.0, min(MAX_SLEEP, (min(upcoming) - now).total_seconds()))

    async def _fire(self, pub: Publisher, schedule: Schedule, at: datetime) -> bool:
        """Publish one firing; True when it is done with (confirmed, or nobody is bound)."""
        eid = event_id(schedule.name, at)
        # the CloudEvents time is the scheduled instant, so a late or repeated firing reads
        # the same as an on-time one
        event = Event(
            type=schedule.event, data=schedule.data, id=eid, source=pub.source, time=at,
            traceparent=new_traceparent(),
        )  # fmt: skip
        try:
            await pub.send(event)
        except UnroutableError:
            log.warning("%s: no queue is bound for %s; firing dropped", eid, schedule.event)
            return True
        except PublishError as exc:
            log.error("%s not confirmed (%s); will retry", eid, exc)
            return False
        except aiormq.exceptions.ChannelNotFoundEntity:
            exchange = self.topology.events[schedule.event].exchange
            log.error("%s: exchange %r does not exist (run `bus topology apply`)", eid, exchange)
            return False
        self.metrics.firings.labels(schedule.name).inc()
        log.info("fired %s", eid, extra={"event_id": eid, "event_type": schedule.event})
        return True

    async def _still_leader(self, conn: AbstractConnection) -> bool:
        """Our lock queue still exists (someone may have deleted it by hand)."""
        channel = await conn.channel(publisher_confirms=False)
        try:
            await channel.declare_queue(self.lock_queue, passive=True)
            return True
        except (aiormq.exceptions.ChannelNotFoundEntity, aiormq.exceptions.ChannelLockedResource):
            return False
        finally:
            await close_quietly(channel)

    def _set_leader(self, value: bool) -> None:
        if value != self.leader:
            self.leader = value
            self.metrics.leader.set(1 if value else 0)


# The record: the last fired instant per schedule, as the one message of a durable classic
# queue (like `bus topology apply`'s record), so a new leader knows where to resume.


async def read_record(conn: AbstractConnection, queue: str) -> dict[str, datetime]:
    """The last fired instant per schedule, or {} when nothing was recorded."""
    body = await plumbing.read_record(conn, queue)
    if body is None:
        return {}
    try:
        raw = json.loads(body)
        return {str(k): datetime.fromisoformat(v) for k, v in raw["last_fired"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("ignoring an unreadable record in %s", queue)
        return {}


async def write_record(conn: AbstractConnection, queue: str, last: dict[str, datetime]) -> None:
    """Replace the record with *last* (confirmed; x-max-length 1 drops the previous one)."""
    body = {
        "last_fired": {name: instant_text(at) for name, at in sorted(last.items())},
        "leader": f"{socket.gethostname()}:{os.getpid()}",
        "written_at": instant_text(datetime.now(UTC).replace(microsecond=0)),
    }
    await plumbing.write_record(
        conn, queue, json.dumps(body).encode(), content_type="application/json"
    )


def with_heartbeat(url: str, seconds: int = HEARTBEAT) -> str:
    """*url* asking for a short heartbeat (unless it sets one), so a frozen leader is dropped."""
    parts = urlsplit(url)
    if "heartbeat=" in parts.query:
        return url
    query = f"{parts.query}&heartbeat={seconds}" if parts.query else f"heartbeat={seconds}"
    return urlunsplit(parts._replace(query=query))


async def _wait_any(timeout: float, *events: asyncio.Event) -> None:
    """Sleep *timeout* seconds or until one of *events* is set."""
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def _setter(event: asyncio.Event) -> Callable[..., None]:
    """A close callback that sets *event*."""
    return lambda *_: event.set()


def _name(exc: BaseException) -> str:
    return type(exc).__name__
