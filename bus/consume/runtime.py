"""The subscriber runtime: the I/O shell around `bus.consume.dispatch`.

It consumes one queue, hands each delivery to the `Dispatcher`, which decides (and runs the
handler), and performs the outcome on the broker: ack, hand off to a retry queue or the DLQ,
or requeue.

Failure hand-off: the message is republished (body and properties intact, `x-death*` stripped,
failure headers added) to the next `Q.retry.<delay>` or to `Q.dlq` through the default exchange,
with publisher confirms and `mandatory`, and only then acked. A crash in between yields a
duplicate, which the idempotency store absorbs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustChannel, AbstractRobustConnection

from bus.amqp.connection import connect
from bus.amqp.delivery import Delivery
from bus.amqp.flow import Flow
from bus.consume.acks import Acker
from bus.consume.claims import Claims
from bus.consume.consumer import Consumer
from bus.consume.dispatch import Ack, Dispatcher, Duplicate, Outcome, Park, Retry
from bus.consume.handoff import HandOff
from bus.consume.router import Router
from bus.consume.watchdog import Watchdog
from bus.durations import label
from bus.errors import ConfigError
from bus.metrics import Metrics
from bus.produce.publisher import Publisher
from bus.sagas.hosting import Hosted, host_sagas
from bus.settings import DEFAULT_RECONNECT_INTERVAL
from bus.stores.base import DEFAULT_LEASE, DEFAULT_SAGA_RETENTION, Store
from bus.topology.model import Subscriber, Topology

log = logging.getLogger(__name__)

OK, RETRIED, DEAD, DUPLICATE = "ok", "retried", "dead", "duplicate"

HandOffFactory = Callable[[AbstractChannel, Flow | None], HandOff]


def refuse_timeout_at_or_over(sub: Subscriber, consumer_timeout: float) -> None:
    """ConfigError when *sub*'s `timeout` is not below the broker's `consumer_timeout`: the
    broker would close the channel before the bus stops the handler."""
    timeout_ms = sub.timeout_ms
    if timeout_ms is not None and timeout_ms >= consumer_timeout * 1000:
        raise ConfigError(
            f"subscriber {sub.name!r}: timeout {sub.timeout} is not below the broker's "
            f"consumer_timeout ({label(int(consumer_timeout * 1000))}): RabbitMQ would close "
            "the channel first. Lower the timeout, or raise consumer_timeout on the broker and "
            "set BUS_CONSUMER_TIMEOUT to match"
        )


class Runtime:
    """Runs one subscriber of the topology: `await rt.start()`, later `await rt.stop()`.

    *handoff* builds the hand-off from its confirm channel and that connection's flow (a
    seam for fault injection).
    """

    def __init__(
        self,
        topology: Topology,
        name: str,
        router: Router,
        *,
        url: str,
        store: Store,
        metrics: Metrics | None = None,
        lease: float = DEFAULT_LEASE,
        handoff: HandOffFactory = HandOff,
        consumer_timeout: float = 1800.0,
        reconnect_interval: float = DEFAULT_RECONNECT_INTERVAL,
        saga_retention: float = DEFAULT_SAGA_RETENTION,
    ) -> None:
        """*consumer_timeout*: the broker's, in seconds; a `timeout` not below it is refused
        (ConfigError), and without a `timeout` a handler past half of it is warned about.
        *saga_retention*: seconds a completed saga instance is kept."""
        self.topology = topology
        self.sub = topology.subscriber(name)
        refuse_timeout_at_or_over(self.sub, consumer_timeout)
        self.consumer_timeout = consumer_timeout
        self.router = router
        self.url = url
        self.store = store
        self.metrics = metrics or Metrics.default()
        self.lease = lease
        self.reconnect_interval = reconnect_interval
        self.saga_retention = saga_retention
        self._sagas: Hosted | None = None
        self._make_handoff = handoff
        self._connection: AbstractRobustConnection | None = None  # consuming and acks
        # follow-ups and retry hand-offs: under a broker alarm RabbitMQ stops reading a
        # connection that publishes, acks and all, so publishing has a connection of its own
        self._publishing: AbstractRobustConnection | None = None
        self._handoff: HandOff | None = None
        self._acks = Acker()
        self._claims = Claims(store, self.sub.name, lease)
        self._counters: dict[tuple[str, str], Any] = {}
        self._timers: dict[str, Any] = {}
        self._consumer: Consumer | None = None
        self._publisher: Publisher | None = None  # these two from start()
        self._dispatcher: Dispatcher | None = None
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._watchdog: Watchdog | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._connection = await connect(
            self.url, f"subscriber:{self.sub.name}", reconnect_interval=self.reconnect_interval
        )
        self._publishing = await connect(
            self.url, f"subscriber:{self.sub.name}:publish",
            reconnect_interval=self.reconnect_interval,
        )  # fmt: skip
        self._publisher = Publisher(
            self.url, self.topology, source=self.sub.name, metrics=self.metrics,
            connection=self._publishing,
        )  # fmt: skip
        await self._publisher.connect()
        if self.router.sagas:
            self._sagas = await host_sagas(
                self.sub.name, self.router.sagas, self.store, topology=self.topology,
                url=self.url, check=self._publisher.check, sends=self._publisher,
                metrics=self.metrics, retention=self.saga_retention,
                reconnect_interval=self.reconnect_interval,
            )  # fmt: skip
        self._dispatcher = Dispatcher(
            self.topology, self.sub, self.router, self._claims, self._publisher,
            observe=self._observe, sagas=self._sagas.host if self._sagas else None,
        )  # fmt: skip
        await self._dispatcher.start()
        self._handoff = self._make_handoff(
            await self._publishing.channel(publisher_confirms=True, on_return_raises=True),
            self._publisher.flow,
        )
        channel = await self._connection.channel(publisher_confirms=False)
        assert isinstance(channel, AbstractRobustChannel)
        # a batch handler of 500 needs 500 deliveries in hand, or its batch never fills
        prefetch = max(self.sub.prefetch, self.router.largest_batch)
        await channel.set_qos(prefetch_count=prefetch)
        self._consumer = Consumer(channel, self.sub.queue, self._on_message)
        try:  # on the aiormq channel: the robust one would declare it again on every reopen
            # and give up reopening for good while the queue is missing
            underlay = await channel.get_underlay_channel()
            await underlay.queue_declare(self.sub.queue, passive=True)
            await self._consumer.start()
        except aiormq.exceptions.ChannelNotFoundEntity:
            await self.stop(0)
            raise ConfigError(
                f"queue {self.sub.queue!r} of subscriber {self.sub.name!r} does not exist: "
                "run `bus topology apply` first"
            ) from None
        self._claims.start()
        if self.sub.timeout is None:
            self._watchdog = Watchdog(self.sub.name, self.consumer_timeout, self._acks.running)
            self._watchdog.start()
        # read at each scrape: it follows the connection through an outage, as /readyz does
        self.metrics.ready.labels(self.sub.name).set_function(lambda: float(self.ready))
        log.info(
            "subscriber %s consuming %s (prefetch %d)", self.sub.name, self.sub.queue,
            prefetch, extra={"subscriber": self.sub.name},
        )  # fmt: skip

    @property
    def ready(self) -> bool:
        """Connected and consuming."""
        conn = self._connection
        return (
            conn is not None
            and not conn.is_closed
            and conn.connected.is_set()
            and self._consumer is not None
            and self._consumer.consuming
            and not self._stopping
        )

    @property
    def inflight(self) -> int:
        return self._inflight

    async def stop(self, grace: float = 30.0) -> bool:
        """Stop consuming, let in-flight handlers finish within *grace* seconds, then close.

        Returns False when handlers were still running at the deadline (their messages are
        not acked and the broker redelivers them).
        """
        self._stopping = True
        self.metrics.ready.labels(self.sub.name).set_function(lambda: 0.0)  # and forget us
        if self._consumer is not None:
            await self._consumer.cancel()
        if self._dispatcher is not None:  # waiting batches run now, not at their flush
            self._dispatcher.flush_batches()
        drained = True
        try:  # wait_for(..., 0) times out even on a set event: ask first
            if not self._idle.is_set():
                await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            drained = False
            log.warning("%d handlers still running after %.0fs grace", self._inflight, grace)
        await self._acks.drain()
        if self._watchdog is not None:
            await self._watchdog.stop()
        if self._dispatcher is not None:  # its pools: threads and processes
            await self._dispatcher.close(1.0 if drained else 0.0)
        await self._claims.stop()
        if self._sagas is not None:  # the relay finishes its batch; the rest waits in the store
            await self._sagas.close()
            self._sagas = None
        if self._publisher is not None:
            await self._publisher.close()
        for connection in (self._connection, self._publishing):
            if connection is not None and not connection.is_closed:
                await connection.close()
        return drained

    # -- one delivery ------------------------------------------------------------------------

    async def _on_message(self, message: Delivery) -> None:
        self._acks.delivered(message)
        if self._stopping:
            self._acks.settled(message)  # never acked: requeued by the broker when we close
            return
        self._inflight += 1
        self._idle.clear()
        try:
            assert self._dispatcher is not None  # consuming starts after it exists
            await self._perform(message, await self._dispatcher.dispatch(message))
        except Exception:  # a bug or a store outage must not kill the consumer
            log.exception("unexpected error handling a delivery; returning it to the queue")
            await asyncio.sleep(1.0)  # a brake: a persistent fault must not become a hot loop
            await self._requeue(message)
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def _perform(self, m: Delivery, outcome: Outcome) -> None:
        """Carry out what the dispatcher decided; only this touches the broker."""
        kind = type(outcome)
        if kind is Ack:
            self._acks.ack(m)  # coalesced with its neighbours (bus.consume.acks)
            self._count(outcome.event_type, OK)
        elif kind is Duplicate:
            self._acks.ack(m)
            self._count(outcome.event_type, DUPLICATE)
        elif isinstance(outcome, Retry | Park):
            await self._hand_off(m, outcome)
        else:  # Requeue: another replica held the claim all through the claim's wait
            await self._requeue(m)

    async def _requeue(self, m: Delivery) -> None:
        self._acks.settled(m)
        try:
            await m.nack(requeue=True)
        except Exception:  # a dead channel requeues it anyway
            log.debug("nack failed", exc_info=True)

    def _count(self, event_type: str, outcome: str) -> None:
        child = self._counters.get((event_type, outcome))
        if child is None:
            child = self.metrics.consumed.labels(self.sub.name, event_type, outcome)
            self._counters[(event_type, outcome)] = child
        child.inc()

    def _observe(self, event_type: str, seconds: float) -> None:
        child = self._timers.get(event_type)
        if child is None:
            child = self._timers[event_type] = self.metrics.handler_seconds.labels(
                self.sub.name, event_type
            )
        child.observe(seconds)

    async def _hand_off(self, m: Delivery, outcome: Retry | Park) -> None:
        """Republish to the retry queue or the DLQ with confirms, and only then ack."""
        assert self._handoff is not None
        try:
            await self._handoff.republish(m, outcome.queue, outcome.headers)
        except Exception as exc:
            # Could not hand off. Reject without requeue: the queue's own dead-letter route
            # parks the message in Q.dlq (without our headers), so it is never lost.
            log.error("hand-off of %s to %s failed (%s); rejecting it to %s",
                      m.message_id, outcome.queue, exc, self.sub.dlq)  # fmt: skip
            self._acks.settled(m)
            try:
                await m.reject(requeue=False)
            except Exception:
                log.warning("reject of %s failed: it will be redelivered", m.message_id)
            self._count(outcome.event_type, DEAD)
            return
        self._acks.ack(m)
        if isinstance(outcome, Park):
            self._count(outcome.event_type, DEAD)
            log.warning("parked %s in %s (%s)", m.message_id, outcome.queue, outcome.reason,
                        extra={"event_id": m.message_id, "subscriber": self.sub.name})  # fmt: skip
        else:
            self._count(outcome.event_type, RETRIED)
