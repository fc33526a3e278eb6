"""A partition's deliveries through the gate: run, wait their turn, or go round the hold queue.

The shell around `bus.ordering.gate.Gate` for one process. It keeps a gate per partition queue;
a delivery that arrives on a channel other than the one its partition's gate has seen means the
old channel closed (the broker gives its unacknowledged events again, maybe to another
replica), so that gate starts afresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from bus.amqp.delivery import Delivery
from bus.ordering.gate import Ended, Gate, Hold, Verdict
from bus.ordering.partitions import HELD_BY, key_of

log = logging.getLogger(__name__)

Process = Callable[[Delivery], Awaitable[Ended | None]]  # None: returned to the queue
Aside = Callable[[Delivery, str, str], Awaitable[None]]  # (delivery, hold queue, held by)


class Intake:
    """`await arrive(partition, hold_queue, delivery)` for each delivery of a partition queue."""

    def __init__(self, process: Process, aside: Aside) -> None:
        """*process* dispatches a delivery and performs its outcome (ack, retry, park);
        *aside* sends one round its partition's hold queue, then acks it."""
        self.process = process
        self.aside = aside
        self._gates: dict[str, Gate[Delivery]] = {}
        self._channels: dict[str, object] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def holds(self) -> dict[str, list[Hold]]:
        """Held keys per partition queue."""
        return {q: g.holds() for q, g in self._gates.items()}

    def active(self) -> list[str]:
        """Partition queues this process consumes as their active consumer, as far as it can
        tell: it had a delivery from each on a channel still open."""
        return [q for q, ch in self._channels.items() if not getattr(ch, "is_closed", True)]

    def held_keys(self) -> float:
        """Keys held now, over the partitions this process is active on."""
        active = set(self.active())
        return float(sum(len(g.holds()) for q, g in self._gates.items() if q in active))

    def oldest_hold(self, now: float) -> float:
        """Seconds the longest-held key has waited (0 when none is held)."""
        active = set(self.active())
        since = [h.since for q, g in self._gates.items() if q in active for h in g.holds()]
        return now - min(since) if since else 0.0

    def _gate(self, partition: str, m: Delivery) -> Gate[Delivery]:
        gate = self._gates.get(partition)
        if gate is None:
            gate = self._gates[partition] = Gate()
        if self._channels.get(partition) is not m.channel:
            if partition in self._channels:
                log.info("%s comes on a new channel: its keys start afresh", partition)
            gate.forget()
            self._channels[partition] = m.channel
        return gate

    async def arrive(self, partition: str, hold_queue: str, m: Delivery) -> None:
        """Decide at once (before any await: deliveries keep their order), then act."""
        headers = m.headers
        key = key_of(headers, m.message_id)
        event_id = m.message_id or ""
        from_lap = HELD_BY in headers
        gate = self._gate(partition, m)
        verdict = gate.admit(key, event_id, m, from_lap=from_lap)
        if verdict is Verdict.ASIDE:
            await self._aside(gate, hold_queue, key, m)
        elif verdict is Verdict.RUN:
            if from_lap:  # it runs now: a retry copy must not look like a lap's
                headers.pop(HELD_BY, None)
            await self._run(gate, hold_queue, key, m)
        # WAIT: the event of its key that runs now starts it when it ends

    async def _aside(self, gate: Gate[Delivery], hold_queue: str, key: str, m: Delivery) -> None:
        holder = next((h.held_by for h in gate.holds() if h.key == key), "")
        await self.aside(m, hold_queue, holder)

    async def _run(self, gate: Gate[Delivery], hold_queue: str, key: str, m: Delivery) -> None:
        current: Delivery | None = m
        while current is not None:
            ended = await self.process(current)
            nxt, aside = gate.done(
                key, current.message_id or "", Ended.RETRY if ended is None else ended,
                time.time(),
            )  # fmt: skip
            for item in aside:  # in their order: one channel keeps it
                self._spawn(self._aside(gate, hold_queue, key, item))
            if nxt is not None:
                nxt.headers.pop(HELD_BY, None)
            current = nxt

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
