"""Publish events: validated against the topology before anything is sent, confirmed by the
broker, persistent, `mandatory` (an unroutable event is an error, not a silent success).

`Publisher` is asyncio; `SyncPublisher` wraps it for WSGI code (Django, Flask).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

import bus.topology.delays as delays
from bus import tracing
from bus.amqp.connection import connect
from bus.amqp.flow import Flow, flow_of
from bus.envelope import Event, Wire, encode, new_ids, new_traceparent
from bus.errors import (
    ConfigError,
    InvalidEvent,
    NotApplied,
    PublishError,
    PublishTimeout,
    UnroutableError,
)
from bus.metrics import Metrics
from bus.produce.confirms import ConfirmWriter
from bus.produce.frames import to_properties
from bus.produce.stall import STALL_SECONDS, StallWatch
from bus.produce.validation import EventChecker
from bus.produce.window import Window
from bus.settings import DEFAULT_RECONNECT_INTERVAL, Settings, redact
from bus.topology.delays import Delay
from bus.topology.model import Topology
from bus.topology.model import load as load_topology
from bus.topology.ordering import partition_header, partition_of

log = logging.getLogger(__name__)
DELAY_HEADER = "bus-delay-seconds"  # on a delayed event: the delay it was published with

# Errors after which the message may not have reached the broker: publish it again once the
# robust connection is back. A duplicate is possible and harmless (the event id is the same).
_TRANSIENT = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ConnectionClosed,
    ConnectionError,
    asyncio.TimeoutError,
)

EventLike = Event | tuple[str, Any]


def check_id(event_id: str | None) -> None:
    """An explicit event id must say something: an empty one would silently become random."""
    if event_id is not None and not event_id.strip():
        raise InvalidEvent("the event id is empty: give a non-empty id, or none for a random one")


class Publisher:
    """Publishes declared events with confirms. Use as `async with Publisher.from_env() as pub`."""

    def __init__(
        self,
        url: str,
        topology: Topology,
        *,
        source: str = "bus",
        deadline: float = 30.0,
        metrics: Metrics | None = None,
        connection: AbstractRobustConnection | None = None,
        wait_out_blocks: bool = False,
        reconnect_interval: float = DEFAULT_RECONNECT_INTERVAL,
        stall: float | None = STALL_SECONDS,
    ) -> None:
        self.url = url
        self.reconnect_interval = reconnect_interval
        # True: seconds the broker blocks publishing (a memory or disk alarm) do not count
        # toward *deadline*; for the relay, whose rows wait in the outbox anyway
        self.wait_out_blocks = wait_out_blocks
        self.topology = topology
        self.source = source
        self.deadline = deadline
        self.metrics = metrics or Metrics.default()
        self._connection = connection
        self._owns_connection = connection is None
        self._channel: AbstractChannel | None = None
        self._aiormq: aiormq.Channel | None = None  # the robust channel's current one
        self._writer = ConfirmWriter()  # a batch's publishes: one write per loop turn
        self._partitions: dict[str, tuple[int, ...]] = {}  # event type -> `partitions` stamped
        self._direct = 0  # `basic_publish` calls under way, which the writer must not overtake
        self._checker = EventChecker(topology)
        self._published: dict[str, Any] = {}
        self._flow: Flow | None = None  # the broker's connection.blocked, if it says
        # *stall*: seconds without a confirm (nacks do not count) while publishes are
        # outstanding, after which the connection is dropped and made again (the next node of
        # a cluster) and the outstanding events sent again (same ids); None: never
        self._stall = StallWatch(
            stall, lambda: self._connection, lambda: self._flow,
            on_drop=self._forget_channel, where=self._where,
        )  # fmt: skip

    @classmethod
    def from_env(cls, *, source: str = "bus", **settings: str | None) -> Publisher:
        """Broker and topology from `BUS_URL` and `BUS_TOPOLOGY` (keyword overrides win)."""
        s = Settings.from_env(**settings)
        return cls(
            s.url, load_topology(s.topology), source=source,
            reconnect_interval=s.reconnect_interval,
        )  # fmt: skip

    async def connect(self) -> Self:
        if self._connection is None:
            self._connection = await connect(
                self.url, f"publisher:{self.source}", reconnect_interval=self.reconnect_interval
            )
        self._flow = flow_of(self._connection)
        if self._flow is not None:
            self._flow.report_to(self.metrics.broker_blocked)
        self._channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self._stall.start()
        return self

    async def close(self) -> None:
        await self._stall.stop()
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
        self._aiormq = None
        if self._owns_connection and self._connection is not None:
            await self._connection.close()
        self._channel = None

    @property
    def stalls(self) -> int:
        """Connections dropped because the broker stopped confirming (`bus.produce.stall`)."""
        return self._stall.stalls

    @property
    def confirm_watch(self) -> StallWatch:
        """The confirm watch of this publisher's connection (`bus.produce.stall`): other
        publishes on that connection (the retry hand-off) report to it too."""
        return self._stall

    @property
    def flow(self) -> Flow | None:
        """Whether the broker blocks publishing now (`bus.amqp.flow`); None before `connect()`."""
        return self._flow

    @property
    def connected(self) -> bool:
        """Connected to the broker now (the robust connection may be reconnecting)."""
        conn = self._connection
        return (
            conn is not None and not conn.is_closed and conn.connected.is_set()
            and self._channel is not None
        )  # fmt: skip

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- building and checking -------------------------------------------------------------

    def event(self, event_type: str, data: Any, **kw: Any) -> Event:
        """A checked `Event`: the type is declared and the data passes its JSON Schema."""
        self.check(event_type, data)
        check_id(kw.get("id"))
        return self._build(event_type, data, **kw)

    def _build(self, event_type: str, data: Any, **kw: Any) -> Event:
        kw = {k: v for k, v in kw.items() if v is not None}
        kw.setdefault("traceparent", new_traceparent())
        return Event(type=event_type, data=data, source=self.source, **kw)

    def check(self, event_type: str, data: Any) -> None:
        """Raise UnknownEventType or InvalidEvent before anything is sent."""
        self._checker.check(event_type, data)

    def _wire(self, event: Event) -> Wire:
        """*event*'s wire form with its ordering headers: `bus-key`, and for each ordered
        subscriber whose exchange routes it to its partition, `bus-partition-<N>`."""
        key = self.key(event.type, event.data)
        wire = encode(event, key)
        if key is None:
            return wire
        counts = self._partitions.get(event.type)
        if counts is None:
            counts = self._partitions[event.type] = self.topology.partition_counts(event.type)
        for n in counts:
            wire.headers[partition_header(n)] = str(partition_of(key, n))
        return wire

    def key(self, event_type: str, data: Any) -> str | None:
        """The `bus-key` header of a checked event: its ordering key, None for an unkeyed type."""
        return self._checker.key(event_type, data)

    # -- publishing --------------------------------------------------------------------------

    async def publish(
        self,
        event_type: str,
        data: Any,
        *,
        id: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        traceparent: str | None = None,
        delay: Delay | None = None,
    ) -> str:
        """Publish one event and wait for the broker's confirm; returns the event id.

        With *delay* (``"24h"``, seconds, a timedelta) the broker holds it in its delay levels
        (`bus.topology.delays`) and delivers it to the event's exchange once the delay has passed.
        """
        seconds = delays.seconds_of(delay) if delay is not None else None  # ValueError: at once
        event = self.event(
            event_type, data, id=id, correlation_id=correlation_id,
            causation_id=causation_id, traceparent=traceparent,
        )  # fmt: skip
        await self.send(event, parent=traceparent, delay=seconds)
        return event.id

    async def publish_many(self, events: Iterable[EventLike], *, window: int = 1000) -> list[str]:
        """Publish many events with up to *window* confirms in flight; all are checked first.

        Raises PublishTimeout when no confirm at all arrived for `deadline` seconds (a batch
        may take longer than that in all, as long as the broker keeps confirming).
        """
        checked = list(events)
        for e in checked:  # every event is checked before the first is sent
            if isinstance(e, Event):
                self.check(e.type, e.data)
            else:
                self.check(e[0], e[1])
        fresh = iter(new_ids(sum(not isinstance(e, Event) for e in checked)))
        ids = [e.id if isinstance(e, Event) else next(fresh) for e in checked]

        async def one(i: int) -> None:
            e = checked[i]
            if not isinstance(e, Event):  # built here, while earlier ones are in flight
                e = Event(type=e[0], data=e[1], id=ids[i], source=self.source,
                          traceparent=new_traceparent())  # fmt: skip
            # no timer per publish: scheduling and cancelling one per event cost ~5 % of the
            # CPU; the watchdog below catches a broker that stopped answering
            await self.send(e, timer=False)

        window_ = Window(window, one, len(checked))
        if not await window_.watched(self.deadline):
            raise PublishTimeout(
                f"no answer from the broker for {self.deadline:.0f}s{self._blocking()}: "
                f"{window_.done} of {len(checked)} events confirmed; the others may or may not "
                "have been published (send them again: same ids)"
            )
        failures = window_.failures
        if failures:
            raise PublishError(
                f"{len(failures)} of {len(checked)} events were not confirmed; first: {failures[0]}"
            ) from failures[0]
        return ids

    async def send(
        self, event: Event, *, timer: bool = True, parent: str | None = None,
        delay: int | None = None,
    ) -> None:  # fmt: skip
        """Publish an already-checked event, republishing after reconnects until the deadline.

        *delay*: whole seconds (`bus.topology.delays.seconds_of`) the broker holds it first.

        `timer=False`: a batch's publish: no deadline on the first confirm (the caller watches
        for progress), and one write with the other publishes started in the same loop turn.
        *parent*: a `traceparent` that OpenTelemetry's publish span continues when the caller
        is in no span of its own (the relay, for the trace an outbox writer began).
        """
        first_timeout = self.deadline if timer else None
        exchange_name = self.topology.events[event.type].exchange
        wire = self._wire(event)
        routing_key = event.type
        if delay is not None:  # into the delay levels, which end at exchange_name
            wire.headers[DELAY_HEADER] = delay
            exchange_name, routing_key = delays.route(delay, exchange_name, event.type)
        started = time.monotonic()
        try:
            if tracing.active():
                with tracing.publish_span(
                    exchange_name, event.type, event.id, parent
                ) as traceparent:
                    if traceparent:
                        wire.headers["traceparent"] = traceparent
                    await self._send_once(wire, exchange_name, routing_key, started,
                                          first_timeout)  # fmt: skip
            else:
                await self._send_once(wire, exchange_name, routing_key, started, first_timeout)
        except aio_pika.exceptions.PublishError as exc:
            raise UnroutableError(
                f"{event.type} ({event.id}) was returned by the broker: no queue is bound for it "
                f"on exchange {exchange_name!r} (run `bus topology apply`?)"
            ) from exc
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise NotApplied(
                f"exchange {exchange_name!r} does not exist on {redact(self.url)}: "
                "run `bus topology apply` before publishing"
            ) from exc
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise PublishError(
                f"the broker refused {event.type} ({event.id}) on exchange {exchange_name!r}: "
                f"{exc.args[0] if exc.args else exc} (check the user's permissions)"
            ) from exc
        except aio_pika.exceptions.DeliveryError as exc:
            raise PublishError(
                f"{event.type} ({event.id}) was refused by the broker: {exc}"
            ) from exc
        except Exception as exc:
            if not self._transient(exc):
                raise
            why = self._blocking() or f": {type(exc).__name__}: {exc}"
            raise PublishTimeout(
                f"{event.type} ({event.id}) not confirmed within {self.deadline:.0f}s{why}"
            ) from exc
        counter = self._published.get(event.type)
        if counter is None:
            counter = self._published[event.type] = self.metrics.published.labels(event.type)
        counter.inc()
        self.metrics.confirm_seconds.observe(time.monotonic() - started)

    async def _send_once(
        self, wire: Wire, exchange: str, routing_key: str, started: float, timeout: float | None
    ) -> None:
        # the event waits for its confirm from here until it is confirmed or given up, through
        # every resend: the stall clock (`bus.produce.stall`) runs all that time
        self._stall.sent()
        try:
            try:  # the common case: one publish, one confirm
                await self._publish(wire, exchange, routing_key, timeout)
            except Exception as exc:
                if not self._transient(exc) or (isinstance(exc, TimeoutError) and self._blocking()):
                    raise  # a block outlasted the deadline: sending again will not help
                await self._send_again(wire, exchange, routing_key, started)
        finally:
            self._stall.settled()

    def _blocking(self) -> str:
        """``: broker blocked publishing (low on memory) for 30 s`` while it does, else ""."""
        flow = self._flow
        return f": {flow.describe()}" if flow is not None and flow.blocked else ""

    def _transient(self, exc: BaseException) -> bool:
        """May a publish that raised *exc* succeed when sent again (same id)?

        After a connection loss, and after a nack: on a cluster the broker nacks while a quorum
        queue has no leader (its node was lost). A returned message (`PublishError`: nothing is
        bound) is final. A bare RuntimeError only while the connection is down: aiormq raises
        one ("... closed") for a channel asked of a connection that is reconnecting. Any other
        RuntimeError is a bug, which must surface at once rather than as a PublishTimeout after
        the deadline.
        """
        if isinstance(exc, aio_pika.exceptions.PublishError):
            return False
        if isinstance(exc, (*_TRANSIENT, aio_pika.exceptions.DeliveryError)):
            return True
        if type(exc) is Exception:  # aiormq rejects a pending confirm with a bare Exception
            return True  # when its channel closes without a reason (a reconnect in progress)
        return isinstance(exc, RuntimeError) and self._connection_down()

    def _connection_down(self) -> bool:
        conn = self._connection
        if conn is None:
            return False
        if conn.is_closed or not conn.connected.is_set():
            return True
        transport = conn.transport
        return transport is None or transport.connection.is_closed

    async def _send_again(
        self, wire: Wire, exchange: str, routing_key: str, started: float
    ) -> None:
        """The connection dropped (or the broker nacked) before the confirm: publish again (same
        id) once the robust connection is back, with jittered backoff, until the deadline."""
        log.info("republishing %s %s after a connection loss or nack", wire.type, wire.message_id)
        async for attempt in AsyncRetrying(
            stop=stop_after_delay(max(0.0, self.deadline - (time.monotonic() - started))),
            wait=wait_random_exponential(multiplier=0.05, max=2.0),
            retry=retry_if_exception(self._transient),
            reraise=True,
        ):
            with attempt:
                remaining = max(0.5, self.deadline - (time.monotonic() - started))
                await self._publish(wire, exchange, routing_key, min(10.0, remaining))

    async def _publish(
        self, wire: Wire, exchange: str, routing_key: str, timeout: float | None
    ) -> None:
        """One `basic.publish` on the confirm channel, awaiting the broker's confirm.

        Without *timeout* (a batch's publish: `publish_many` watches for progress itself) the
        frames go through `bus.produce.confirms`, in one write with the others started in the same
        loop turn. Otherwise straight to aiormq with `wait=False`: aio-pika's `Exchange.publish`
        holds the channel lock until the writer has flushed each frame, so concurrent publishes
        would queue behind one another's socket writes; the confirm is what we wait for.
        """
        flow = self._flow
        if flow is not None and flow.blocked:  # the broker reads nothing from us: wait here
            waited = time.monotonic()
            # TimeoutError when the block outlasts *timeout* (unless we wait blocks out)
            await flow.wait(None if self.wait_out_blocks else timeout)
            if timeout is not None and not self.wait_out_blocks:
                timeout = max(0.1, timeout - (time.monotonic() - waited))
        channel = await self._underlay()
        try:
            if timeout is None and not self._direct:
                confirmation, tag = self._writer.start(channel, wire, exchange, routing_key)
                try:
                    await confirmation
                finally:
                    self._writer.forget(channel, wire.message_id, tag)
            else:
                await self._publish_direct(channel, wire, exchange, routing_key, timeout, flow)
        except aio_pika.exceptions.DeliveryError as exc:
            if not isinstance(exc, aio_pika.exceptions.PublishError):  # not a return: a nack
                self._stall.nacked()
            raise
        self._stall.confirmed()

    async def _publish_direct(
        self, channel: aiormq.Channel, wire: Wire, exchange: str, routing_key: str,
        timeout: float | None, flow: Flow | None,
    ) -> None:  # fmt: skip
        self._direct += 1  # from here on, publishes take this way too
        try:
            await self._writer.drained()  # delivery tags reach the broker in the order taken
            if self.wait_out_blocks and flow is not None:  # a deadline that stops while blocked
                async with flow.deadline(timeout):
                    await channel.basic_publish(
                        wire.body, exchange=exchange, routing_key=routing_key,
                        properties=to_properties(wire), mandatory=True, wait=False,
                    )  # fmt: skip
                return
            await channel.basic_publish(
                wire.body, exchange=exchange, routing_key=routing_key,
                properties=to_properties(wire),
                mandatory=True, timeout=timeout, wait=False,
            )  # fmt: skip
        finally:
            self._direct -= 1

    def _forget_channel(self) -> None:
        self._aiormq = None

    def _where(self) -> str:
        return self._flow.node if self._flow else redact(self.url)

    async def _underlay(self) -> aiormq.Channel:
        current = self._aiormq
        if current is not None and not current.is_closed:  # the common case, without awaiting
            return current
        if self._channel is None:
            raise ConfigError("Publisher is not connected: use `async with` or `await connect()`")
        connection = self._connection
        if self._channel.is_closed and connection is not None and not connection.is_closed:
            await self._channel.reopen()  # robust channels reopen by themselves, a plain one here
        self._aiormq = cast(aiormq.Channel, await self._channel.get_underlay_channel())
        return self._aiormq
