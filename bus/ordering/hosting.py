"""An ordered subscriber inside a runtime: the partitioner, the partitions' intake, the holds in
the store, the sentinel and the reports.

The runtime (`bus.consume.runtime`) owns the connections, the dispatcher and the acks; it hands
this module what it needs as callables (one seam: `OrderedHost`), so ordering stays below the
consume runtime in the layers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from bus.amqp.delivery import Delivery
from bus.amqp.plumbing import queue_counts
from bus.metrics import Metrics
from bus.ordering.gate import Ended
from bus.ordering.intake import Decided, Intake
from bus.ordering.partitioner import Partitioner
from bus.ordering.partitions import LAPS_FLAG, SENTINEL, laps_flag, partition_of
from bus.ordering.reporter import Reporter
from bus.stores.base import HoldStore, Store
from bus.topology.model import Subscriber

log = logging.getLogger(__name__)

OnDelivery = Callable[[Delivery], Awaitable[None]]


class Subscription(Protocol):
    """One `basic.consume` of the runtime (`bus.consume.consumer.Consumer`)."""

    async def start(self) -> None: ...
    async def cancel(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Shell:
    """What the runtime does for the ordered host."""

    delivered: Callable[[Delivery], None]  # in hand: the acks count it
    ack: Callable[[Delivery], None]
    requeue: Callable[[Delivery], Awaitable[None]]
    process: Callable[[Delivery, Decided], Awaitable[Ended | None]]  # None: back unhandled
    republish: Callable[[Delivery, str, dict[str, Any]], Awaitable[None]]  # confirmed
    subscribe: Callable[[str, OnDelivery], Subscription]


class OrderedHost:
    """`await start()` after the runtime's hand-off exists; `consumers` then start with the
    runtime's own; `await stop()` when it stops consuming."""

    def __init__(
        self, sub: Subscriber, store: Store, publishing: AbstractRobustConnection, shell: Shell,
        metrics: Metrics,
    ) -> None:  # fmt: skip
        self.sub = sub
        self.store = store
        self.publishing = publishing
        self.shell = shell
        self.metrics = metrics
        self.partitioner: Partitioner | None = None
        self.intake = Intake(
            shell.process, self._set_aside, load=self._load_holds, record=self._record_hold,
            mark=self._mark, drop=shell.ack,
        )  # fmt: skip
        self.reporter = Reporter(sub, self.intake, publishing)
        self.consumers: dict[str, Subscription] = {}

    async def start(self) -> None:
        channel: AbstractChannel = await self.publishing.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self.partitioner = Partitioner(self.sub, channel)
        for i, queue in enumerate(self.sub.partition_queues):
            self.consumers[queue] = self.shell.subscribe(queue, self._arrival(queue, i))
        intake, name = self.intake, self.sub.name
        self.metrics.held_keys.labels(name).set_function(intake.held_keys)
        self.metrics.oldest_hold.labels(name).set_function(lambda: intake.oldest_hold(time.time()))
        self.reporter.start()

    def _arrival(self, queue: str, index: int) -> OnDelivery:
        hold = self.sub.hold_queue(index)

        async def arrive(m: Delivery) -> None:
            self.shell.delivered(m)
            await self.intake.arrive(queue, hold, m)

        return arrive

    async def stop(self) -> None:
        for consumer in self.consumers.values():
            await consumer.cancel()
        await self.reporter.stop()

    async def route(self, m: Delivery) -> None:
        """From the subscriber's queue to its partition, confirmed (the caller acks)."""
        assert self.partitioner is not None
        await self.partitioner.route(m)

    # -- the holds in the store ------------------------------------------------------------------

    async def _load_holds(self, partition: str) -> tuple[list[tuple[str, str, float]], bool]:
        """Held keys of *partition* from the store, and whether laps may be out: its hold queue
        holds some, or the store's laps-out flag is set."""
        index = self.sub.partition_queues.index(partition)
        held: list[tuple[str, str, float]] = []
        flagged = False
        if isinstance(self.store, HoldStore):
            for h in await self.store.holds(self.sub.name):
                if h[0].startswith(LAPS_FLAG):
                    flagged = flagged or h[0] == laps_flag(partition)
                elif partition_of(h[0], self.sub.partitions) == index:
                    held.append(h)
        counts = await queue_counts(self.publishing, self.sub.hold_queue(index))
        return held, flagged or bool(counts and counts.messages)

    async def _record_hold(self, key: str, event_id: str, held: bool) -> None:
        if not isinstance(self.store, HoldStore):
            return
        if held:
            await self.store.hold(self.sub.name, key, event_id)
        else:
            await self.store.unhold(self.sub.name, key, event_id)

    # -- laps --------------------------------------------------------------------------------------

    async def _set_aside(self, m: Delivery, hold: str, headers: dict[str, Any]) -> None:
        """Send an event of a held key round its partition's hold queue, then ack it."""
        try:
            await self.shell.republish(m, hold, headers)
        except Exception as exc:
            log.warning("could not set %s aside (%s); returned to its partition",
                        m.message_id, exc)  # fmt: skip
            await self.shell.requeue(m)
            return
        self.shell.ack(m)

    async def _mark(self, hold: str, headers: dict[str, Any]) -> None:
        """A sentinel round *hold*, confirmed."""
        assert self.partitioner is not None
        message = aio_pika.Message(b"", headers=headers, delivery_mode=2,
                                   message_id=f"sentinel-{headers[SENTINEL]}")  # fmt: skip
        await self.partitioner.channel.default_exchange.publish(message, routing_key=hold)
