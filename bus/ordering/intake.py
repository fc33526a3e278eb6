"""A partition's deliveries through the gate: run, wait their turn, or go round the hold queue.

The shell around `bus.ordering.gate.Gate` for one process. Each partition queue gets a gate per
channel: deliveries on a new channel mean the old one closed (the broker gave its unacknowledged
events again, maybe to another replica) or the partition was just taken over. Before the new
gate admits anything it reads the partition's held keys from the store, so a key held by a
replica that died stays held; its first deliveries wait in order meanwhile.

If the previous owner may have left laps out (its hold queue holds some, a key is held, or the
store's laps-out flag for the partition is set), the new gate starts calm and sends a sentinel
round the hold queue; when the sentinel comes back, every lap the old owner sent is back and
now one of this gate's, and the gate settles. The flag is set in the store before a gate sends
its first lap and cleared once it has nothing held and nothing out.

Each event's verdict is taken the moment it arrives, before any await, so verdicts follow the
order of the partition queue. An event without a sequence number (routed straight here by the
partition exchange) gets one then, from this process's clock, in partition order: its laps and
its retry copy carry it (the partitioner keeps it when the retry passes through `Q`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from bus.amqp.delivery import Delivery
from bus.ordering.gate import Ended, Gate, Hold, Verdict
from bus.ordering.partitions import HELD_BY, LAP, SENTINEL, SEQ, key_of, laps_flag, seq_of

log = logging.getLogger(__name__)

Decided = Callable[[Ended], Awaitable[None]]
# dispatch and perform a delivery, calling back once decided and before performing;
# None: it went back to its queue unhandled
Process = Callable[[Delivery, Decided], Awaitable[Ended | None]]
# (delivery, hold queue, headers) -> sent round the lap (False: it went back to its partition)
Aside = Callable[[Delivery, str, dict[str, Any]], Awaitable[bool]]
# the partition's held keys from the store, and whether its hold queue holds laps
Load = Callable[[str], Awaitable[tuple[list[tuple[str, str, float]], bool]]]
Record = Callable[[str, str, bool], Awaitable[None]]  # (key, event id, held?)
Mark = Callable[[str, dict[str, Any]], Awaitable[None]]  # a sentinel: (hold queue, headers)
Drop = Callable[[Delivery], None]  # ack a delivery that is no event (a sentinel)

_BROKER_DEATH = ("x-death", "x-first-death", "x-last-death")
SENTINEL_AGAIN = 5.0  # seconds: a sentinel not back by then is sent again


@dataclass
class _Partition:
    queue: str
    hold: str
    channel: object
    gate: Gate[Delivery] | None = None  # None while the held keys load
    pending: list[Delivery] = field(default_factory=list)
    # events going round the hold queue, sent one after another in the order of their verdicts
    # (a task per send could let a later verdict's send overtake an earlier one)
    asides: deque[tuple[Delivery, dict[str, Any]]] = field(default_factory=deque)
    sending: bool = False
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:12])  # its gate's
    flagged: bool = False  # the store says this partition may have laps out
    flag_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    running: int = 0  # events of this partition running now (each with its key's waiting)
    paused: list[Delivery] | None = None  # while handing the partition over: kept, unadmitted


class Intake:
    """`await arrive(partition, hold_queue, delivery)` for each delivery of a partition queue."""

    def __init__(
        self, process: Process, aside: Aside, *, load: Load | None = None,
        record: Record | None = None, mark: Mark | None = None, drop: Drop | None = None,
    ) -> None:  # fmt: skip
        """*process* dispatches a delivery and performs its outcome (ack, retry, park);
        *aside* sends one round its partition's hold queue, then acks it; *load* and *record*
        read and write held keys in the store (without them holds live in memory only);
        *mark* publishes a sentinel into a hold queue, *drop* acks one that came back."""
        self.process = process
        self.aside = aside
        self.load = load
        self.record = record
        self.mark = mark
        self.drop = drop
        self._parts: dict[str, _Partition] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._last = 0  # the last sequence number given here

    # -- what operators see ---------------------------------------------------------------------

    def holds(self) -> dict[str, list[Hold]]:
        """Held keys per partition queue."""
        return {q: p.gate.holds() for q, p in self._parts.items() if p.gate is not None}

    def active(self) -> list[str]:
        """Partition queues this process consumes as their active consumer, as far as it can
        tell: it had a delivery from each on a channel still open."""
        return [q for q, p in self._parts.items() if not getattr(p.channel, "is_closed", True)]

    def held_keys(self) -> float:
        """Keys held now, over the partitions this process is active on."""
        holds = self.holds()
        return float(sum(len(holds.get(q, [])) for q in self.active()))

    def oldest_hold(self, now: float) -> float:
        """Seconds the longest-held key has waited (0 when none is held)."""
        holds = self.holds()
        since = [h.since for q in self.active() for h in holds.get(q, [])]
        return now - min(since) if since else 0.0

    # -- deliveries -------------------------------------------------------------------------------

    async def arrive(self, partition: str, hold_queue: str, m: Delivery) -> None:
        p = self._parts.get(partition)
        if p is None or p.channel is not m.channel:
            if p is not None:
                log.info("%s comes on a new channel: its keys start afresh", partition)
            p = self._parts[partition] = _Partition(partition, hold_queue, m.channel)
            self._spawn(self._open(p))
        if p.paused is not None:
            p.paused.append(m)  # back to the queue, in place, when the channel closes
            return
        if SENTINEL in m.headers:
            self._sentinel_back(p, m)
            return
        if p.gate is None:
            p.pending.append(m)  # admitted in this order once the held keys are read
            return
        await self._act(p, p.gate, m, self._decide(p.gate, m))

    # -- handing a partition over ----------------------------------------------------------------

    def pause(self, partition: str) -> bool:
        """Admit nothing more of *partition* (its deliveries wait, unacked); False when this
        process has no gate for it."""
        p = self._parts.get(partition)
        if p is None:
            return False
        if p.paused is None:
            p.paused = []
        return True

    def quiet(self, partition: str) -> bool:
        """Nothing of *partition* is running, waiting its turn or being sent round a lap."""
        p = self._parts.get(partition)
        return p is None or (
            p.gate is not None and not p.running and not p.asides and not p.sending
        )

    async def resume(self, partition: str) -> None:
        """Admit *partition*'s deliveries again, those kept meanwhile first, in order."""
        p = self._parts.get(partition)
        if p is None or p.paused is None:
            return
        kept, p.paused = p.paused, None
        for m in kept:
            await self.arrive(p.queue, p.hold, m)

    def forget(self, partition: str) -> None:
        """The partition's channel is closed: its next deliveries (if any) start a new gate."""
        self._parts.pop(partition, None)

    def _sentinel_back(self, p: _Partition, m: Delivery) -> None:
        tag = m.headers.get(SENTINEL)
        tag = tag.decode() if isinstance(tag, bytes) else str(tag)
        if p.gate is not None and p.gate.tag == tag and p.gate.calm:
            log.info("%s: the sentinel is back, every earlier lap too", p.queue)
            p.gate.settle()
            p.settled.set()
        if self.drop is not None:
            self.drop(m)

    async def _open(self, p: _Partition) -> None:
        held: list[tuple[str, str, float]] = []
        laps_out = False
        while self.load is not None:
            try:
                held, laps_out = await self.load(p.queue)
                break
            except Exception as exc:  # the store is down: its deliveries wait, unacked
                log.warning("cannot read the held keys of %s yet (%s); retrying in 1 s",
                            p.queue, exc)  # fmt: skip
                await asyncio.sleep(1.0)
        calm = bool(held or laps_out) and self.mark is not None
        if laps_out and self.record is not None:  # the flag is ours now: cleared when idle
            await self._flag(p, p.tag, True)
        gate: Gate[Delivery] = Gate(p.tag, held=held, calm=calm)
        if calm:
            log.info("%s: %d keys held by the previous owner, laps out: %s; calm until the "
                     "sentinel is back", p.queue, len(held), laps_out)  # fmt: skip
            self._spawn(self._sentinel(p, gate))
        pending, p.pending = p.pending, []
        verdicts = [(m, self._decide(gate, m)) for m in pending]  # all before any await
        p.gate = gate
        for m, verdict in verdicts:
            if verdict is Verdict.ASIDE:
                self._set_aside(p, gate, m)
            elif verdict is Verdict.RUN:
                p.running += 1  # now: `quiet` must not see a gap before the task starts
                self._spawn(self._run(p, gate, m))

    async def _sentinel(self, p: _Partition, gate: Gate[Delivery]) -> None:
        """Send the gate's sentinel round the hold queue until it is back (again every few
        seconds: one may be lost with a connection)."""
        assert self.mark is not None
        while gate.calm and self._parts.get(p.queue) is p:
            try:
                await self.mark(p.hold, {SENTINEL: gate.tag, LAP: gate.tag})
            except Exception as exc:
                log.warning("could not send the sentinel of %s (%s)", p.queue, exc)
            try:
                await asyncio.wait_for(p.settled.wait(), SENTINEL_AGAIN)
            except TimeoutError:
                continue

    def _decide(self, gate: Gate[Delivery], m: Delivery) -> Verdict:
        headers = m.headers
        key = key_of(headers, m.message_id)
        seq = seq_of(headers)
        if not seq:  # routed here by the partition exchange: numbered in partition order now
            self._last = seq = max(self._last + 1, time.time_ns())
            if not m.properties.headers:  # None or an empty table: `m.headers` made a new dict
                m.properties.headers = headers
            headers[SEQ] = seq  # its laps and its retry copy carry it
        return gate.admit(key, m.message_id or "", seq, m)

    async def _act(self, p: _Partition, gate: Gate[Delivery], m: Delivery, v: Verdict) -> None:
        if v is Verdict.ASIDE:
            self._set_aside(p, gate, m)
        elif v is Verdict.RUN:
            p.running += 1
            await self._run(p, gate, m)
        # WAIT: the event of its key that runs now starts it when it ends

    def _set_aside(self, p: _Partition, gate: Gate[Delivery], m: Delivery) -> None:
        """Queue *m* for the hold queue now (its place in line is taken here, synchronously)."""
        key = key_of(m.headers, m.message_id)
        # without the broker's x-death* of earlier laps: a lap is our republish, not a cycle
        headers = {k: v for k, v in m.headers.items() if not k.startswith(_BROKER_DEATH)}
        p.asides.append((m, {**headers, HELD_BY: gate.held_by(key) or "", LAP: gate.tag}))
        if not p.sending:
            p.sending = True
            self._spawn(self._send_asides(p))

    async def _send_asides(self, p: _Partition) -> None:
        try:
            while p.asides:
                if not p.flagged and self.record is not None:
                    async with p.flag_lock:  # durable before the first lap leaves
                        await self._flag(p, p.tag, True)
                m, headers = p.asides.popleft()
                if not await self.aside(m, p.hold, headers) and p.gate is not None:
                    p.gate.returned(key_of(headers, m.message_id), seq_of(headers))
        finally:
            p.sending = False

    async def _flag(self, p: _Partition, tag: str, out: bool) -> None:
        assert self.record is not None
        while True:
            try:
                await self.record(laps_flag(p.queue), tag, out)
                p.flagged = out
                return
            except Exception as exc:  # the store is down: the lap waits for it
                log.warning("cannot record the laps of %s (%s); retrying in 1 s", p.queue, exc)
                await asyncio.sleep(1.0)

    def _unflag_when_idle(self, p: _Partition) -> None:
        if p.flagged and p.gate is not None and p.gate.idle() and not p.flag_lock.locked():
            self._spawn(self._unflag(p))

    async def _unflag(self, p: _Partition) -> None:
        async with p.flag_lock:
            if p.flagged and p.gate is not None and p.gate.idle() and not p.asides:
                await self._flag(p, p.tag, False)

    async def _run(self, p: _Partition, gate: Gate[Delivery], m: Delivery) -> None:
        """Run *m* and its key's next ones; the caller counted it in `p.running`."""
        try:
            await self._run_key(p, gate, m)
        finally:
            p.running -= 1

    async def _run_key(self, p: _Partition, gate: Gate[Delivery], m: Delivery) -> None:
        key = key_of(m.headers, m.message_id)
        current: Delivery | None = m
        while current is not None:
            current.headers.pop(HELD_BY, None)  # it runs now: a retry copy is no lap
            current.headers.pop(LAP, None)
            event_id = current.message_id or ""

            async def decided(ended: Ended, event_id: str = event_id) -> None:
                if self.record is None:
                    return
                if ended is Ended.RETRY:  # before the retry copy is acked: durable first
                    await self.record(key, event_id, True)
                elif gate.held_by(key) == event_id:  # before its ack: a crash runs it again
                    await self.record(key, event_id, False)

            ended = await self.process(current, decided)
            nxt, aside = gate.done(key, event_id, Ended.RETRY if ended is None else ended,
                                   time.time())  # fmt: skip
            for item in aside:  # in line now, in their order
                self._set_aside(p, gate, item)
            current = nxt
        self._unflag_when_idle(p)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
