"""One delivery in, one outcome out: the decisions of a subscriber, apart from its I/O.

`Dispatcher.dispatch` decodes a delivery, picks the handler, parses the event, claims its id,
runs the handler and says what must happen to the message:

| outcome     | when                                                  | the shell then      |
|-------------|-------------------------------------------------------|---------------------|
| `Ack`       | the handler returned (its id is recorded as done)     | acks                |
| `Duplicate` | the id was already processed: the handler did not run | acks                |
| `Retry`     | the handler raised and the ladder has a next delay    | hands off, then acks |
| `Park`      | rejected, invalid, no handler, or retries exhausted   | hands off, then acks |
| `Requeue`   | another live replica still holds the id's claim       | nacks with requeue  |

`bus.consume.runtime.Runtime` performs outcomes on the broker; `bus.testing.TestBus` performs them
in memory. Neither decides anything, so both behave alike by construction.

The common outcomes are cached per event type: a handled message allocates no outcome.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import ValidationError

from bus import tracing
from bus.consume.batches import BatchContext, Batcher
from bus.consume.claims import Claims
from bus.consume.context import Context
from bus.consume.executors import Runner
from bus.consume.router import Executor, Handler, Router
from bus.envelope import H_AGAIN, Meta, decode_body, decode_meta, idempotency_key
from bus.errors import InvalidEvent, Reject
from bus.produce.publishes import Publishes
from bus.retry import (
    DeadLetter,
    DeadReason,
    Decision,
    after_failure,
    attempt_of,
    dead,
    failure_headers,
)
from bus.stores.base import Claim
from bus.topology.model import Subscriber, Topology
from bus.topology.schemas import Schemas

log = logging.getLogger(__name__)


class Incoming(Protocol):
    """What dispatch reads of a delivery (`bus.amqp.delivery.Delivery` is one)."""

    @property
    def body(self) -> bytes: ...
    @property
    def exchange(self) -> str: ...
    @property
    def routing_key(self) -> str: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def type(self) -> str | None: ...
    @property
    def app_id(self) -> str | None: ...
    @property
    def timestamp(self) -> datetime | None: ...
    @property
    def correlation_id(self) -> str | None: ...
    @property
    def headers(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Ack:
    """The handler returned: ack."""

    event_type: str


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Already processed: ack without running the handler."""

    event_type: str


@dataclass(frozen=True, slots=True)
class Retry:
    """Republish (body and properties intact, these headers) to `queue`, a retry queue."""

    event_type: str
    queue: str
    delay: str
    headers: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Park:
    """Republish to `queue`, the DLQ, with these headers (`bus-dead-reason` among them)."""

    event_type: str
    queue: str
    reason: DeadReason
    headers: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Requeue:
    """Give the message back to the queue untouched: another replica still holds its claim."""

    event_type: str
    why: str


Outcome = Ack | Duplicate | Retry | Park | Requeue
Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Dispatcher:
    """The decisions of one subscriber. `await dispatch(delivery)` -> `Outcome`."""

    def __init__(
        self,
        topology: Topology,
        sub: Subscriber,
        router: Router,
        claims: Claims,
        publisher: Publishes,
        *,
        clock: Clock = _utcnow,
        observe: Callable[[str, float], None] | None = None,
        runner: Runner | None = None,
        batch_timer: bool = True,
        sagas: Any = None,
    ) -> None:
        """*runner* runs handlers where they belong, within limits (default: the one *sub*
        asks for, on the real clock); `close()` closes it. *batch_timer* False: a batch runs
        only when full or on `flush_batches()` (TestBus). *sagas* (a `bus.sagas.SagaHost`)
        runs the steps of the router's sagas: their handlers find it as `ctx.sagas`."""
        self.topology = topology
        self.sub = sub
        self.router = router
        self.claims = claims
        self.publisher = publisher
        self.clock = clock
        self.observe = observe  # (event type, handler seconds), after every handler run
        self.sagas = sagas
        self.runner = runner or Runner.for_subscriber(sub)
        self._plain = self.runner.plain
        self._batch_timer = batch_timer
        self._batchers: dict[str, Batcher] = {}
        self._acks: dict[str, Ack] = {}
        self._duplicates: dict[str, Duplicate] = {}
        self._schemas = Schemas(topology)

    async def dispatch(self, m: Incoming) -> Outcome:
        """Decide what happens to *m*, running its handler when it should run.

        Raises only what the store raises (an outage): the caller returns the message.
        """
        headers = m.headers
        attempt = attempt_of(headers)
        try:
            meta = decode_meta(
                message_id=m.message_id, type=m.type, app_id=m.app_id, timestamp=m.timestamp,
                correlation_id=m.correlation_id, headers=headers,
            )  # fmt: skip
        except InvalidEvent as exc:
            return self._fail(m, dead(self.sub, DeadReason.INVALID), attempt, None, str(exc),
                              "unknown")  # fmt: skip
        handler = self.router.match(meta.type)
        if handler is None:
            why = f"no handler for event type {meta.type!r} in subscriber {self.sub.name!r}"
            return self._fail(m, dead(self.sub, DeadReason.NO_HANDLER), attempt, None, why,
                              meta.type)  # fmt: skip
        try:
            event = self._parse(handler, meta.type, m.body)
        except (InvalidEvent, ValidationError) as exc:
            return self._fail(m, dead(self.sub, DeadReason.INVALID), attempt, handler,
                              _short(exc), meta.type)  # fmt: skip
        return await self._run(m, headers, meta, handler, event, attempt)

    async def _run(
        self,
        m: Incoming,
        headers: Mapping[str, Any],
        meta: Meta,
        handler: Handler,
        event: Any,
        attempt: int,
    ) -> Outcome:
        ctx = Context(meta, attempt, self.sub.name, m.routing_key, headers, self.publisher,
                      self.sagas)  # fmt: skip
        key = meta.id if H_AGAIN not in headers else idempotency_key(meta.id, headers)
        claim = await self.claims.claim(key)
        if claim is Claim.DONE:
            ctx.log.info("duplicate %s %s: already processed, acked", meta.type, meta.id)
            return self._duplicate(meta.type)
        if claim is Claim.BUSY:  # never run beside a live holder, nor release its lease
            ctx.log.warning("%s %s is still claimed by another replica; requeued",
                            meta.type, meta.id)  # fmt: skip
            return Requeue(meta.type, "claimed by another replica")
        if handler.batch is not None:
            return await self._run_batched(m, meta, handler, event, ctx, attempt, key)
        started = time.perf_counter()
        try:
            if tracing.active():
                with tracing.process_span(self.sub.queue, meta.id, m.routing_key,
                                          meta.traceparent, attempt):  # fmt: skip
                    await self._call(handler, event, ctx)
            elif self._plain and handler.executor is Executor.LOOP:
                await handler.func(event, ctx)  # the hot path: nothing between
            else:
                await self.runner.run(handler, event, ctx)
        except Reject as exc:
            await self.claims.release(key)
            ctx.log.warning("rejected %s %s: %s", meta.type, meta.id, exc.reason)
            reason = DeadReason(getattr(exc, "dead_reason", DeadReason.REJECTED))
            return self._fail(m, dead(self.sub, reason), attempt, handler, exc,
                              meta.type)  # fmt: skip
        except Exception as exc:
            await self.claims.release(key)
            ctx.log.warning("handler %s failed on attempt %d: %s: %s", handler.name, attempt,
                            type(exc).__name__, exc)  # fmt: skip
            return self._fail(m, after_failure(self.sub, attempt), attempt, handler, exc,
                              meta.type)  # fmt: skip
        except BaseException:  # cut off: the channel closed under it, or the process stops
            await self.claims.let_go(key)  # the broker redelivers it: let that run it
            raise
        finally:
            if self.observe is not None:
                self.observe(meta.type, time.perf_counter() - started)
        await self.claims.complete(key)
        return self._ack(meta.type)

    async def _run_batched(
        self,
        m: Incoming,
        meta: Meta,
        handler: Handler,
        event: Any,
        ctx: Context,
        attempt: int,
        key: str,
    ) -> Outcome:
        batcher = self._batcher(handler)
        future = batcher.add(event, ctx)
        try:  # shielded: a cut-off delivery must not take its item's result from a running batch
            result = await asyncio.shield(future)
        except BaseException:  # cut off (its channel closed): the broker redelivers it
            if batcher.withdraw(future):  # its batch had not run: out of it, the claim let go
                await self.claims.let_go(key)
            else:  # its batch runs on with it: the claim ends as that run ends, and until then
                self.claims.end_with(key, future)  # holds the redelivery off
            raise
        if result is None:
            await self.claims.complete(key)
            return self._ack(meta.type)
        await self.claims.release(key)
        if isinstance(result, Reject):
            return self._fail(m, dead(self.sub, DeadReason.REJECTED), attempt, handler, result,
                              meta.type)  # fmt: skip
        return self._fail(m, after_failure(self.sub, attempt), attempt, handler, result,
                          meta.type)  # fmt: skip

    def _batcher(self, handler: Handler) -> Batcher:
        batcher = self._batchers.get(handler.name)
        if batcher is None:
            assert handler.batch is not None

            async def run(events: list[Any], ctx: BatchContext) -> None:
                await self.runner.run(handler, events, ctx)  # type: ignore[arg-type]

            batcher = self._batchers[handler.name] = Batcher(
                handler.batch, handler.flush, run, timer=self._batch_timer
            )
        return batcher

    def batched(self, m: Incoming) -> bool:
        """Will *m* wait for a batch (its handler is a batch handler)?"""
        handler = self.router.match(m.type) if m.type else None
        return handler is not None and handler.batch is not None

    @property
    def batch_waiting(self) -> int:
        """Events waiting in batches that have not run yet."""
        return sum(b.waiting for b in self._batchers.values())

    def flush_batches(self) -> int:
        """Run every batch handler now on what waits for it; returns how many events."""
        waiting = sum(b.waiting for b in self._batchers.values())
        for batcher in self._batchers.values():
            batcher.flush_now()
        return waiting

    async def _call(self, handler: Handler, event: Any, ctx: Context) -> None:
        if self._plain and handler.executor is Executor.LOOP:
            await handler.func(event, ctx)
        else:
            await self.runner.run(handler, event, ctx)

    async def start(self, *, warm: bool = True) -> None:
        """Prepare the pools its handlers need; *warm* spawns the process pool now."""
        await self.runner.start(self.router.handlers, warm=warm)

    async def close(self, grace: float = 5.0) -> None:
        """Close the runner's pools (after the last handler returned)."""
        await self.runner.close(grace)

    def _ack(self, event_type: str) -> Ack:
        outcome = self._acks.get(event_type)
        if outcome is None:
            outcome = self._acks[event_type] = Ack(event_type)
        return outcome

    def _duplicate(self, event_type: str) -> Duplicate:
        outcome = self._duplicates.get(event_type)
        if outcome is None:
            outcome = self._duplicates[event_type] = Duplicate(event_type)
        return outcome

    def _fail(
        self,
        m: Incoming,
        decision: Decision,
        attempt: int,
        handler: Handler | None,
        error: BaseException | str,
        event_type: str,
    ) -> Retry | Park:
        headers = failure_headers(
            m.headers, decision=decision, attempt=attempt, subscriber=self.sub.name,
            handler=handler.name if handler else None, error=error, now=self.clock(),
            exchange=m.exchange, routing_key=m.routing_key,
        )  # fmt: skip
        if isinstance(decision, DeadLetter):
            return Park(event_type, decision.queue, decision.reason, headers)
        return Retry(event_type, decision.queue, decision.delay, headers)

    def _parse(self, handler: Handler, event_type: str, body: bytes) -> Any:
        checked = self._schemas.has_schema(event_type)
        if not checked and handler.adapter is not None:
            return handler.parse_json(body)  # one pass: bytes -> model
        data = decode_body(body)
        if checked and (problem := self._schemas.problem(event_type, data)) is not None:
            raise InvalidEvent(f"fails the {event_type} schema {problem}")
        return handler.parse_data(data)


def _short(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        return f"invalid event: {exc.error_count()} error(s), first at {where}: {first['msg']}"
    return str(exc)
