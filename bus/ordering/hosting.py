"""An ordered subscriber inside a runtime: the partitioner, the partitions' intake, the holds in
the store, the sentinel and the reports.

The runtime (`bus.consume.runtime`) owns the connections, the dispatcher and the acks; it hands
this module what it needs as callables (one seam: `OrderedHost`), so ordering stays below the
consume runtime in the layers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from bus.amqp.delivery import Delivery
from bus.amqp.plumbing import queue_counts
from bus.metrics import Metrics
from bus.ordering.balance import BALANCE_EVERY, QUIET_WITHIN, fair_share, to_hand_on
from bus.ordering.gate import Ended
from bus.ordering.intake import Decided, Intake
from bus.ordering.partitioner import Partitioner
from bus.ordering.partitions import LAPS_FLAG, laps_flag
from bus.ordering.reporter import Reporter
from bus.stores.base import HoldStore, Store
from bus.topology.model import Subscriber
from bus.topology.ordering import partition_of

log = logging.getLogger(__name__)

OnDelivery = Callable[[Delivery], Awaitable[None]]


class Subscription(Protocol):
    """One `basic.consume` on a channel of its own (`bus.consume.consumer.Consumer`)."""

    async def start(self) -> None: ...
    async def cancel(self) -> None: ...
    async def close(self) -> None: ...  # close the channel: unacked deliveries go back in place

    @property
    def consuming(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Shell:
    """What the runtime does for the ordered host."""

    delivered: Callable[[Delivery], None]  # in hand: the acks count it
    ack: Callable[[Delivery], None]
    requeue: Callable[[Delivery], Awaitable[None]]
    process: Callable[[Delivery, Decided], Awaitable[Ended | None]]  # None: back unhandled
    republish: Callable[[Delivery, str, dict[str, Any]], Awaitable[None]]  # confirmed
    subscribe: Callable[[str, OnDelivery], Awaitable[Subscription]]  # on a new channel
    flush_acks: Callable[[], Awaitable[None]]  # every ack asked for so far is written


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
        self._balancing: asyncio.Task[None] | None = None
        self._idle_looks: dict[str, int] = {}  # partition -> looks in a row it was not consumed

    async def start(self) -> None:
        channel: AbstractChannel = await self.publishing.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self.partitioner = Partitioner(self.sub, channel)
        for i, queue in enumerate(self.sub.partition_queues):
            self.consumers[queue] = await self.shell.subscribe(queue, self._arrival(queue, i))
        intake, name = self.intake, self.sub.name
        self.metrics.held_keys.labels(name).set_function(intake.held_keys)
        self.metrics.oldest_hold.labels(name).set_function(lambda: intake.oldest_hold(time.time()))
        self.reporter.start()
        await self._join_roster()
        self._balancing = asyncio.get_running_loop().create_task(self._balance_forever())

    async def _join_roster(self) -> None:
        """Consume `Q.replicas`, a queue nothing is published to, so its consumer count is the
        number of replicas (a single-active-consumer queue counts only its active one). Made
        by the replicas themselves, deleted with the last of them; the robust channel
        consumes it again after a reconnect."""
        channel = await self.publishing.channel()
        roster = await channel.declare_queue(
            self.roster, durable=False, auto_delete=True, arguments={"x-queue-type": "classic"}
        )
        await roster.consume(_ignore, no_ack=True)

    @property
    def roster(self) -> str:
        return f"{self.sub.queue}.replicas"

    def _arrival(self, queue: str, index: int) -> OnDelivery:
        hold = self.sub.hold_queue(index)

        async def arrive(m: Delivery) -> None:
            self.shell.delivered(m)
            await self.intake.arrive(queue, hold, m)

        return arrive

    async def stop(self) -> None:
        if self._balancing is not None:
            self._balancing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._balancing
        for consumer in self.consumers.values():
            await consumer.cancel()
        await self.reporter.stop()

    # -- spreading the partitions (bus.ordering.balance) ------------------------------------------

    async def _balance_forever(self) -> None:
        while True:
            await asyncio.sleep(BALANCE_EVERY)
            try:
                await self.revive()
                await self.balance()
            except Exception as exc:  # a broker outage: the next look tries again
                log.debug("balancing the partitions of %s failed: %s", self.sub.name, exc)

    async def revive(self) -> None:
        """Subscribe again to a partition whose channel did not come back after a connection
        loss (a robust channel whose reopen failed while the connection went stays closed)."""
        for index, queue in enumerate(self.sub.partition_queues):
            if self.consumers[queue].consuming:
                self._idle_looks.pop(queue, None)
                continue
            looks = self._idle_looks[queue] = self._idle_looks.get(queue, 0) + 1
            if looks < 2:  # a reconnect in progress: give it a look's time
                continue
            log.warning("%s is not consumed since the connection came back: subscribing again",
                        queue)  # fmt: skip
            await self.consumers[queue].close()
            self.intake.forget(queue)
            again = await self.shell.subscribe(queue, self._arrival(queue, index))
            self.consumers[queue] = again
            await again.start()
            self._idle_looks.pop(queue, None)

    async def balance(self) -> str | None:
        """Hand one partition on if this replica is active on more than its fair share; the
        partition handed on, if any."""
        active = self.intake.active()
        if len(active) <= 1:
            return None
        counts = await queue_counts(self.publishing, self.roster)
        replicas = counts.consumers if counts else 1
        held = {q: len(h) for q, h in self.intake.holds().items()}
        log.debug("%s: active on %s of %d replicas", self.sub.name, active, replicas)
        pick = to_hand_on(active, self.sub.partitions, replicas, held)
        if pick is not None and await self.hand_on(pick):
            log.info("%s handed on to the next replica: %d active here, fair share %d of %d "
                     "replicas", pick, len(active) - 1, fair_share(self.sub.partitions, replicas),
                     replicas)  # fmt: skip
            return pick
        return None

    async def hand_on(self, queue: str) -> bool:
        """Let the next replica in line take *queue*: quiet it, close its channel, subscribe
        again. False when it did not go quiet in time (then it goes on here)."""
        if not self.intake.pause(queue):
            return False
        deadline = time.monotonic() + QUIET_WITHIN
        while not self.intake.quiet(queue):
            if time.monotonic() > deadline:
                await self.intake.resume(queue)
                return False
            await asyncio.sleep(0.005)
        await self.shell.flush_acks()
        await self.consumers[queue].close()  # the ones kept go back in place
        self.intake.forget(queue)
        index = self.sub.partition_queues.index(queue)
        again = await self.shell.subscribe(queue, self._arrival(queue, index))
        self.consumers[queue] = again
        await again.start()
        return True

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

    async def _set_aside(self, m: Delivery, hold: str, headers: dict[str, Any]) -> bool:
        """Send an event of a held key round its partition's hold queue, then ack it; False
        when it went back to its partition instead."""
        try:
            await self.shell.republish(m, hold, headers)
        except Exception as exc:
            log.warning("could not set %s aside (%s); returned to its partition",
                        m.message_id, exc)  # fmt: skip
            await self.shell.requeue(m)
            return False
        self.shell.ack(m)
        return True

    async def _mark(self, hold: str, headers: dict[str, Any]) -> None:
        """A sentinel round *hold*, confirmed."""
        assert self.partitioner is not None
        await self.partitioner.mark(hold, headers)


async def _ignore(_: object) -> None:
    """Nothing is ever published to the roster."""
