"""Test handlers without a broker: the topology's subscribers in memory, on a virtual clock.

```python
async with TestBus(topology="topology/topology.yaml", routers={"email": email_router}) as tb:
    await tb.publish("order.placed", {...}, id="op-1")   # refuses what Publisher refuses
    await tb.settle()        # until nothing is in flight; retry delays pass on a virtual clock
    tb.handled("email")      # [Handled(type, id, attempt)] in order of completion
    tb.parked("email")       # [Parked(id, type, reason, headers, data)]: the DLQ
    tb.now                   # virtual seconds elapsed
```

`TestBus(subscribers=["loyalty"])` runs only the subscribers it names: the others' handlers
(which may send mail, call HTTP services or write files) are not even imported, and what is
routed to them waits in their queues. The `testbus` fixture takes the same list from
`@pytest.mark.testbus(subscribers=[...])`.

What is the same as `bus run`, because it is the same code: the checks of `Publisher`
(undeclared type, JSON Schema, not JSON-serialisable), the wire format (`bus.envelope`), the
decisions (`bus.consume.dispatch`: ack, retry, park, duplicate, with the same headers), idempotency
(the claims over `MemoryStore`) and `ctx.publish`'s follow-up ids. What is RabbitMQ's rule,
reimplemented: routing (`bus.topology.routing`: `*` one word, `#` zero or more; fanout and
direct too; one copy per queue however many of its bindings match; no queue bound =
`UnroutableError`), and a retried message returning to its own queue only, through the default
exchange.

Deliveries run one at a time, in the order they became ready, so a test reads the same every
run; a retry waits on the virtual clock, so a ladder of hours settles in milliseconds.

Handlers run where `bus run` runs them (`bus.consume.executors`): a plain `def` in a thread with a
blocking `ctx.publish`, `executor="process"` in a real worker process (so what cannot be
pickled fails here as it would in production). `rate_limit` spaces handler starts on the
virtual clock; `timeout` is measured in real seconds (a handler's own time is real). A batch
handler runs when its batch is full or when nothing else is ready to deliver (its `flush`
takes no virtual time). Delayed events wait on the virtual clock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from bus.consume.claims import Claims
from bus.consume.dispatch import Ack, Dispatcher, Duplicate, Outcome, Park, Requeue, Retry
from bus.consume.executors import Runner
from bus.consume.handlers import import_router
from bus.consume.router import Router
from bus.durations import parse_ms
from bus.envelope import Wire, decode_body, encode
from bus.errors import ConfigError, UnroutableError
from bus.ordering.gate import Ended, Gate, Verdict
from bus.ordering.partitions import HELD_BY, LAP, SEQ, key_of, seq_of
from bus.produce.publisher import DELAY_HEADER, Publisher
from bus.retry import attempt_of
from bus.sagas import MemorySagaStore, SagaHost
from bus.stores.base import DEFAULT_LEASE
from bus.stores.memory import MemoryStore
from bus.topology.delays import Delay, seconds_of
from bus.topology.model import ExchangeType, Subscriber, Topology
from bus.topology.model import load as load_topology
from bus.topology.plan import HOLD_LAP_MS
from bus.topology.routing import matches

__all__ = ["Handled", "Parked", "TestBus"]


@dataclass(frozen=True, slots=True)
class Handled:
    """A handler run that returned (the message was acked)."""

    type: str
    id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Parked:
    """A message in a subscriber's DLQ, with the headers `bus run` would have written."""

    id: str
    type: str
    reason: str
    headers: dict[str, Any]
    data: Any  # the decoded JSON body, or the raw bytes when it is not JSON


class _Message:
    """One message in a queue, read by dispatch as a broker delivery is."""

    __slots__ = ("_wire", "app_id", "body", "correlation_id", "exchange", "headers",
                 "message_id", "routing_key", "timestamp", "type")  # fmt: skip

    def __init__(
        self, wire: Wire, exchange: str, routing_key: str, headers: dict[str, Any]
    ) -> None:
        self.body = wire.body
        self.exchange = exchange
        self.routing_key = routing_key
        self.message_id: str | None = wire.message_id
        self.type: str | None = wire.type
        self.app_id: str | None = wire.app_id
        self.timestamp: datetime | None = wire.timestamp
        self.correlation_id = wire.correlation_id
        self.headers = headers
        self._wire = wire

    def copy(self, exchange: str, routing_key: str, headers: dict[str, Any]) -> _Message:
        """The same message with new headers, as a hand-off republishes it."""
        return _Message(self._wire, exchange, routing_key, headers)


class _Source:
    """`ctx.publish` of one subscriber: its follow-ups are published with its name as source."""

    def __init__(self, bus: TestBus, source: str) -> None:
        self._bus = bus
        self._source = source

    async def publish(self, event_type: str, data: Any, **kw: Any) -> str:
        return await self._bus.publish(event_type, data, source=self._source, **kw)


class TestBus:
    """The topology's subscribers in memory. See the module docstring."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(
        self,
        topology: str | Path | Topology = "topology/topology.yaml",
        routers: Mapping[str, Router] | None = None,
        *,
        subscribers: Iterable[str] | None = None,
        source: str = "test",
        max_deliveries: int = 100_000,
    ) -> None:
        """*routers* by subscriber name; those not given are imported from the subscriber's
        `handlers:`. *subscribers* limits which subscribers run (default: all); messages
        routed to the others wait in their queues. `settle()` fails after *max_deliveries*
        (a handler that publishes forever)."""
        self.topology = topology if isinstance(topology, Topology) else load_topology(topology)
        self.source = source
        self.max_deliveries = max_deliveries
        names = self.topology.subscriber_names
        running = list(subscribers) if subscribers is not None else names
        unknown = sorted({*running, *(routers or {})} - set(names))
        if unknown:
            raise ConfigError(
                f"no subscriber {', '.join(map(repr, unknown))} in {self.topology.source} "
                f"(declared: {', '.join(names) or 'none'})"
            )
        self._subs: dict[str, Subscriber] = {n: self.topology.subscriber(n) for n in names}
        self._running = running
        self.store = MemoryStore()
        self._publishers: dict[str, Publisher] = {}
        self._dispatchers: dict[str, Dispatcher] = {}
        self._routers: list[Router] = []
        self._epoch = datetime.now(UTC)
        self._now = 0.0
        self.saga_store = MemorySagaStore()
        self._saga_hosts: dict[str, SagaHost] = {}
        for name in running:
            router = (routers or {}).get(name) or import_router(self._subs[name].handlers)
            self._routers.append(router)
            if router.sagas:  # same host as `bus run`, its effects sent after each commit
                self._saga_hosts[name] = SagaHost(
                    name, router.sagas, self.saga_store, self._publisher(name).check,
                    sends=_Source(self, name), clock=lambda: self._clock().timestamp(),
                )  # fmt: skip
            self._dispatchers[name] = Dispatcher(
                self.topology, self._subs[name], router,
                Claims(self.store, name, DEFAULT_LEASE), _Source(self, name), clock=self._clock,
                runner=Runner.for_subscriber(self._subs[name], clock=self._virtual,
                                             sleep=self._advance),
                batch_timer=False, sagas=self._saga_hosts.get(name),
            )  # fmt: skip
        self._ready: deque[tuple[str, _Message]] = deque()
        self._waiting: dict[str, list[_Message]] = {n: [] for n in names}  # not running
        self._delayed: list[tuple[float, int, str, _Message]] = []
        self._seq = itertools.count()
        self._handled: dict[str, list[Handled]] = {n: [] for n in names}
        self._parked: dict[str, list[Parked]] = {n: [] for n in names}
        self._duplicates: dict[str, list[str]] = {n: [] for n in names}
        self._batching: list[asyncio.Task[None]] = []  # deliveries waiting for their batch
        # an ordered subscriber's events pass the gate `bus run` uses (bus.ordering.gate)
        self._gates: dict[str, Gate[_Message]] = {
            n: Gate("testbus") for n in names if self._subs[n].ordered
        }

    async def __aenter__(self) -> Self:
        for dispatcher in self._dispatchers.values():  # process workers spawn on first use
            await dispatcher.start(warm=False)
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Run the routers' shutdown hooks, as `bus run` does once drained."""
        for router in self._routers:
            for hook in router.shutdown_hooks:
                await hook()
        for dispatcher in self._dispatchers.values():
            await dispatcher.close()
        await self.store.close()

    # -- what a test reads --------------------------------------------------------------------

    @property
    def now(self) -> float:
        """Virtual seconds elapsed since the bus was made."""
        return self._now

    def handled(self, subscriber: str) -> list[Handled]:
        """Handler runs of *subscriber* that returned, in order of completion."""
        return list(self._handled[self._known(subscriber)])

    def parked(self, subscriber: str) -> list[Parked]:
        """What *subscriber*'s DLQ holds, in order of arrival."""
        return list(self._parked[self._known(subscriber)])

    def duplicates(self, subscriber: str) -> list[str]:
        """Ids delivered again after they were processed: acked without running the handler."""
        return list(self._duplicates[self._known(subscriber)])

    def saga(self, name: str, key: str) -> tuple[str, Any] | None:
        """`(status, state)` of the instance *key* of saga *name` ("running" or "completed",
        the state model), or None when there is none."""
        for subscriber, host in self._saga_hosts.items():
            saga = host.sagas.get(name)
            if saga is None:
                continue
            found = self.saga_store.get(subscriber, name, key)
            return None if found is None else (found.status, saga.load_state(found.state))
        raise KeyError(f"no running subscriber hosts a saga named {name!r}")

    def pending(self, subscriber: str) -> int:
        """Messages waiting for *subscriber*: ready, on the retry ladder, or not running."""
        name = self._known(subscriber)
        return (
            sum(1 for n, _ in self._ready if n == name)
            + sum(1 for *_, n, _ in self._delayed if n == name)  # "": a delayed event
            + len(self._waiting[name])
        )

    # -- publishing ---------------------------------------------------------------------------

    async def publish(
        self,
        event_type: str,
        data: Any,
        *,
        id: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        traceparent: str | None = None,
        source: str | None = None,
        delay: Delay | None = None,
    ) -> str:
        """Publish as `Publisher.publish` does: refused at once for an undeclared type, data
        failing its JSON Schema, or no queue bound (`UnroutableError`). Returns the id.

        With *delay* the event is routed when the virtual clock reaches it, to the
        subscribers bound then (none bound: it is dropped, as the broker drops it)."""
        seconds = seconds_of(delay) if delay is not None else None
        publisher = self._publisher(source or self.source)
        event = publisher.event(
            event_type, data, id=id, correlation_id=correlation_id,
            causation_id=causation_id, traceparent=traceparent,
        )  # fmt: skip
        wire = encode(event, publisher.key(event_type, event.data))
        exchange = self.topology.events[event_type].exchange
        if seconds is not None:
            wire.headers[DELAY_HEADER] = seconds
            m = _Message(wire, exchange, event_type, dict(wire.headers))
            heapq.heappush(self._delayed, (self._now + seconds, next(self._seq), "", m))
            return event.id
        targets = self._route(exchange, event_type)
        if not targets:
            raise UnroutableError(
                f"{event_type} ({event.id}) was returned: no queue is bound for it on exchange "
                f"{exchange!r}"
            )
        for name in targets:
            self._enqueue(name, _Message(wire, exchange, event_type, dict(wire.headers)))
        return event.id

    def _publisher(self, source: str) -> Publisher:
        pub = self._publishers.get(source)
        if pub is None:  # never connected: only its checks and its event builder are used
            pub = self._publishers[source] = Publisher("memory://", self.topology, source=source)
        return pub

    def _route(self, exchange: str, routing_key: str) -> list[str]:
        """Subscribers whose queue gets a copy: RabbitMQ's rule, one copy per queue."""
        kind = self.topology.exchanges[exchange].type
        out = []
        for name, sub in self._subs.items():
            for b in sub.bindings:
                if b.exchange != exchange:
                    continue
                if (
                    kind is ExchangeType.FANOUT
                    or (kind is ExchangeType.DIRECT and b.key == routing_key)
                    or (kind is ExchangeType.TOPIC and matches(b.key, routing_key))
                ):
                    out.append(name)
                    break
        return out

    def _enqueue(self, name: str, m: _Message) -> None:
        if name in self._dispatchers:
            self._ready.append((name, m))
        else:
            self._waiting[name].append(m)

    # -- running ------------------------------------------------------------------------------

    async def settle(self) -> None:
        """Deliver until nothing is in flight: every ready message, then the clock jumps to
        the next retry due, and so on. Handlers run one at a time."""
        for _ in range(self.max_deliveries):
            if not self._ready:
                if await self._run_batches() or self._tick():
                    continue
                return
            name, m = self._ready.popleft()
            await self._deliver(name, m)
        raise RuntimeError(
            f"TestBus.settle: still busy after {self.max_deliveries} deliveries "
            "(does a handler publish forever?)"
        )

    def _tick(self) -> bool:
        """Advance the virtual clock to the next retry or delayed event due; False when none
        waits."""
        if not self._delayed:
            return False
        self._now = max(self._now, self._delayed[0][0])
        while self._delayed and self._delayed[0][0] <= self._now:
            _, _, name, m = heapq.heappop(self._delayed)
            if name:  # a retry, back to its own queue
                self._ready.append((name, m))
            else:  # a delayed event, due: to whoever is bound now
                for target in self._route(m.exchange, m.routing_key):
                    self._enqueue(target, m.copy(m.exchange, m.routing_key, dict(m.headers)))
        return True

    def _virtual(self) -> float:
        return self._now

    async def _advance(self, seconds: float) -> None:
        """A rate limit's wait, on the virtual clock."""
        self._now += seconds

    def _clock(self) -> datetime:
        return self._epoch + timedelta(seconds=self._now)

    async def _deliver(self, name: str, m: _Message) -> None:
        gate = self._gates.get(name)
        if gate is not None:
            await self._deliver_ordered(name, gate, m)
            return
        dispatcher = self._dispatchers[name]
        if self._batching and dispatcher.claims.holds(m.message_id or ""):
            # a copy of this id waits in a batch: on the broker its flush completes it while
            # this one waits for the claim, so run the batches first (then it is a duplicate)
            await self._run_batches()
        if not dispatcher.batched(m):
            self._perform(name, m, await dispatcher.dispatch(m))
            return
        # a batch handler's delivery waits for its batch: let it reach the batcher (or fill
        # the batch), and go on delivering; `_run_batches` runs what is left
        waiting = dispatcher.batch_waiting
        task = asyncio.get_running_loop().create_task(self._deliver_batched(name, m))
        self._batching.append(task)
        while not task.done() and dispatcher.batch_waiting == waiting:  # noqa: ASYNC110 - turns
            await asyncio.sleep(0)

    async def _deliver_ordered(self, name: str, gate: Gate[_Message], m: _Message) -> None:
        """As `bus run` does for a partition: run, or go round the hold queue while held."""
        key, event_id = key_of(m.headers, m.message_id), m.message_id or ""
        if SEQ not in m.headers:  # as the partitioner stamps it, in delivery order
            m.headers[SEQ] = next(self._seq)
        verdict = gate.admit(key, event_id, seq_of(m.headers), m)
        if verdict is not Verdict.RUN:  # ASIDE (one handler at a time: never WAIT here)
            headers = {**m.headers, HELD_BY: gate.held_by(key) or "", LAP: gate.tag}
            lap = m.copy(m.exchange, m.routing_key, headers)
            heapq.heappush(
                self._delayed, (self._now + HOLD_LAP_MS / 1000, next(self._seq), name, lap)
            )
            return
        m.headers.pop(HELD_BY, None)
        m.headers.pop(LAP, None)
        outcome = await self._dispatchers[name].dispatch(m)
        self._perform(name, m, outcome)
        retry = isinstance(outcome, Retry | Requeue)
        gate.done(key, event_id, Ended.RETRY if retry else Ended.DONE, self._now)

    async def _deliver_batched(self, name: str, m: _Message) -> None:
        self._perform(name, m, await self._dispatchers[name].dispatch(m))

    async def _run_batches(self) -> bool:
        """Nothing else is ready: run every waiting batch; False when none waited."""
        if not self._batching:
            return False
        for dispatcher in self._dispatchers.values():
            dispatcher.flush_batches()
        tasks, self._batching = self._batching, []
        await asyncio.gather(*tasks)
        return True

    def _perform(self, name: str, m: _Message, outcome: Outcome) -> None:
        kind = type(outcome)
        event_id = m.message_id or ""
        if kind is Ack:
            handled = Handled(outcome.event_type, event_id, attempt_of(m.headers))
            self._handled[name].append(handled)
        elif kind is Duplicate:
            self._duplicates[name].append(event_id)
        elif isinstance(outcome, Retry):
            sub = self._subs[name]
            # through the default exchange to Q.retry.<delay>, whose TTL dead-letters it to Q
            back = m.copy("", sub.queue, outcome.headers)
            due = self._now + parse_ms(outcome.delay) / 1000
            heapq.heappush(self._delayed, (due, next(self._seq), name, back))
        elif isinstance(outcome, Park):
            reason, data = str(outcome.reason), _data(m.body)
            parked = Parked(event_id, m.type or "", reason, outcome.headers, data)
            self._parked[name].append(parked)
        else:  # Requeue: never here (one handler at a time, batches run before a held id's
            # copy); kept for parity
            self._ready.append((name, m))

    def _known(self, subscriber: str) -> str:
        if subscriber not in self._subs:
            raise KeyError(f"no subscriber {subscriber!r} in {self.topology.source}")
        return subscriber


def _data(body: bytes) -> Any:
    try:
        return decode_body(body)
    except Exception:
        return body
