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
import contextlib
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
from bus.consume.consumer import Consumer, OnDelivery
from bus.consume.dispatch import Ack, Dispatcher, Duplicate, Outcome, Park, Requeue, Retry
from bus.consume.handoff import HandOff
from bus.consume.router import Router
from bus.consume.watchdog import Watchdog
from bus.durations import label
from bus.errors import ConfigError
from bus.loop import name_of
from bus.metrics import Metrics, type_label
from bus.ordering.gate import Ended
from bus.ordering.hosting import OrderedHost, Shell
from bus.ordering.intake import Decided, Intake
from bus.ordering.reporter import Reporter
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
        # acks gather up to a quarter of the prefetch window (a few ms at most) per frame
        self._acks = Acker(batch=self.sub.prefetch // 4)
        # a store outage holds deliveries rather than requeue them (each requeue counts toward
        # a quorum queue's delivery limit); half the consumer_timeout leaves room for the handler
        self._claims = Claims(store, self.sub.name, lease, patience=consumer_timeout / 2)
        self._counters: dict[tuple[str, str], Any] = {}
        self._timers: dict[str, Any] = {}
        self._declared = frozenset(topology.events)  # metric labels: these, else `undeclared`
        self._consumer: Consumer | None = None
        self._ordered: OrderedHost | None = None  # an ordered subscriber's partitions
        self._rerouting = False  # a failed move: the subscriber's queue is consumed again
        self._again: asyncio.Task[None] | None = None
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
        self._handoff.watch = self._publisher.confirm_watch  # one recovery path for both
        channel = await self._connection.channel(publisher_confirms=False)
        assert isinstance(channel, AbstractRobustChannel)
        # a batch handler of 500 needs 500 deliveries in hand, or its batch never fills
        prefetch = max(self.sub.prefetch, self.router.largest_batch)
        if self.sub.ordered:  # the partitioner's window: every move waits for its confirm
            prefetch = max(prefetch, self.sub.prefetch * self.sub.partitions)
        await channel.set_qos(prefetch_count=prefetch)
        self._consumer = Consumer(channel, self.sub.queue, self._on_message)
        if self.sub.ordered:
            await self._start_ordered(channel)
        queue = self.sub.queue
        try:  # on the aiormq channel: the robust one would declare it again on every reopen
            # and give up reopening for good while the queue is missing
            underlay = await channel.get_underlay_channel()
            for queue in (self.sub.queue, *self.sub.partition_queues):
                await underlay.queue_declare(queue, passive=True)
            await self._consumer.start()
            if self._ordered is not None:
                for consumer in self._ordered.consumers.values():
                    await consumer.start()
        except aiormq.exceptions.ChannelNotFoundEntity:
            await self.stop(0)
            raise ConfigError(
                f"queue {queue!r} of subscriber {self.sub.name!r} does not exist: "
                "run `bus topology apply` first"
            ) from None
        self._claims.start()
        if self.sub.timeout is None:
            self._watchdog = Watchdog(self.sub.name, self.consumer_timeout, self._acks.running)
            self._watchdog.start()
        # read at each scrape: it follows the connection through an outage, as /readyz does
        self.metrics.ready.labels(self.sub.name).set_function(lambda: float(self.ready))
        log.info(
            "subscriber %s consuming %s (prefetch %d, %s loop)", self.sub.name, self.sub.queue,
            prefetch, name_of(), extra={"subscriber": self.sub.name},
        )  # fmt: skip

    async def _start_ordered(self, channel: AbstractRobustChannel) -> None:
        """The subscriber's queue feeds the partitioner; each partition queue the intake."""
        assert self._publishing is not None and self._handoff is not None
        shell = Shell(
            delivered=self._acks.delivered, ack=self._acks.ack, requeue=self._requeue,
            process=self._process_ordered, republish=self._handoff.republish,
            subscribe=self._subscribe_partition, flush_acks=self._acks.drain,
        )  # fmt: skip
        self._ordered = OrderedHost(self.sub, self.store, self._publishing, shell, self.metrics)
        await self._ordered.start()
        self._consumer = Consumer(channel, self.sub.queue, self._on_route)

    async def _subscribe_partition(self, queue: str, on_delivery: OnDelivery) -> Consumer:
        """A partition on a channel of its own: closing it hands the partition on."""
        assert self._connection is not None
        channel = await self._connection.channel(publisher_confirms=False)
        assert isinstance(channel, AbstractRobustChannel)
        await channel.set_qos(prefetch_count=self.sub.prefetch)
        return Consumer(channel, queue, on_delivery)

    @property
    def intake(self) -> Intake | None:
        """An ordered subscriber's partitions, their gates and held keys."""
        return self._ordered.intake if self._ordered is not None else None

    @property
    def reporter(self) -> Reporter | None:
        return self._ordered.reporter if self._ordered is not None else None

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
        await self._stop_consuming()
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
        await self._close(drained)
        return drained

    async def _stop_consuming(self) -> None:
        """No new deliveries: cancel every consumer; waiting batches run now."""
        self._stopping = True
        self.metrics.ready.labels(self.sub.name).set_function(lambda: 0.0)  # and forget us
        again = self._again  # consuming the subscriber's queue again after a failed move
        if again is not None and not again.done():
            again.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await again
        if self._consumer is not None:
            await self._consumer.cancel()
        if self._ordered is not None:
            await self._ordered.stop()
        if self._dispatcher is not None:  # waiting batches run now, not at their flush
            self._dispatcher.flush_batches()

    async def _close(self, drained: bool) -> None:
        """After the drain: the pools, the claims, the sagas' relay, the connections."""
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

    # -- one delivery ------------------------------------------------------------------------

    async def _on_message(self, message: Delivery) -> None:
        self._acks.delivered(message)
        await self._process(message)

    async def _process(self, message: Delivery, decided: Decided | None = None) -> Outcome | None:
        """Dispatch and perform; None when it went back to the queue unhandled. *decided*
        hears how it ended before that is performed (an ordered key's hold is recorded)."""
        if self._stopping:
            self._acks.settled(message)  # never acked: requeued by the broker when we close
            return None
        self._inflight += 1
        self._idle.clear()
        try:
            assert self._dispatcher is not None  # consuming starts after it exists
            outcome = await self._dispatcher.dispatch(message)
            if decided is not None:
                await decided(_ended(outcome))
            await self._perform(message, outcome)
            return outcome
        except Exception:  # a bug, or a store outage past the claims' patience
            log.exception("unexpected error handling a delivery; returning it to the queue")
            await asyncio.sleep(1.0)  # a brake: a persistent fault must not become a hot loop
            await self._requeue(message)
            return None
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    # -- an ordered subscriber ---------------------------------------------------------------

    async def _on_route(self, m: Delivery) -> None:
        """From the subscriber's queue to its partition, confirmed, then acked."""
        self._acks.delivered(m)
        if self._stopping:
            self._acks.settled(m)
            return
        assert self._ordered is not None
        self._inflight += 1
        self._idle.clear()
        try:
            await self._ordered.route(m)  # first: the publishes keep the deliveries' order
        except Exception as exc:
            self._acks.settled(m)  # back to the queue with the channel, in place
            partitioner = self._ordered.partitioner
            if partitioner is not None and partitioner.failed and not self._rerouting:
                log.warning("could not move %s to its partition (%s); every event in hand "
                            "goes back to %s", m.message_id, exc, self.sub.queue)  # fmt: skip
                self._reroute()
        else:
            self._acks.ack(m)
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    def _reroute(self) -> None:
        if not self._rerouting and not self._stopping:
            self._rerouting = True
            self._again = asyncio.get_running_loop().create_task(self._consume_again())

    async def _consume_again(self) -> None:
        """After a failed move: close the subscriber queue's channel (every event in hand goes
        back in place: none may be moved ahead of the one that failed), then consume again."""
        assert self._ordered is not None and self._ordered.partitioner is not None
        try:
            await self._acks.drain()  # the moves confirmed so far are not moved twice
            if self._consumer is not None:
                await self._consumer.close()
            while not self._stopping:
                await asyncio.sleep(1.0)  # a brake: a broken connection is no hot loop
                try:
                    assert self._connection is not None
                    channel = await self._connection.channel(publisher_confirms=False)
                    assert isinstance(channel, AbstractRobustChannel)
                    await channel.set_qos(prefetch_count=self.sub.prefetch * self.sub.partitions)
                    self._ordered.partitioner.reset()
                    self._consumer = Consumer(channel, self.sub.queue, self._on_route)
                    await self._consumer.start()
                    break
                except Exception as exc:
                    log.warning("cannot consume %s again yet (%s)", self.sub.queue, exc)
        finally:
            self._rerouting = False
        if self._ordered.partitioner.failed:  # a move of the new channel failed meanwhile
            self._reroute()

    async def _process_ordered(self, m: Delivery, decided: Decided) -> Ended | None:
        outcome = await self._process(m, decided)
        return None if outcome is None else _ended(outcome)

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
        label = type_label(event_type, self._declared)  # the cache is bounded as the labels
        child = self._counters.get((label, outcome))
        if child is None:
            child = self.metrics.consumed.labels(self.sub.name, label, outcome)
            self._counters[(label, outcome)] = child
        child.inc()

    def _observe(self, event_type: str, seconds: float) -> None:
        label = type_label(event_type, self._declared)
        child = self._timers.get(label)
        if child is None:
            child = self._timers[label] = self.metrics.handler_seconds.labels(self.sub.name, label)
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


def _ended(outcome: Outcome) -> Ended:
    """For an ordered key: back on the ladder or in the queue, the key waits for the event."""
    return Ended.RETRY if isinstance(outcome, Retry | Requeue) else Ended.DONE
