"""The subscriber runtime: consume one queue, dispatch to the router, then ack, retry or park.

Failure hand-off: the message is republished (body and properties intact, `x-death*` stripped,
failure headers added) to the next `Q.retry.<delay>` or to `Q.dlq` through the default exchange,
with publisher confirms and `mandatory`, and only then acked. A crash in between yields a
duplicate, which the idempotency store absorbs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

import aiormq
import jsonschema
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from pydantic import ValidationError

from bus import tracing
from bus.acks import Acker
from bus.claims import Claims
from bus.connection import connect
from bus.consumer import Consumer
from bus.context import Context
from bus.delivery import Delivery
from bus.envelope import Meta, decode_body, decode_meta
from bus.errors import ConfigError, InvalidEvent, Reject
from bus.handoff import HandOff
from bus.metrics import Metrics
from bus.publisher import Publisher
from bus.retry import (
    DeadLetter,
    DeadReason,
    Decision,
    after_failure,
    attempt_of,
    dead,
    failure_headers,
)
from bus.router import Handler, Router
from bus.stores.base import DEFAULT_LEASE, Claim, Store
from bus.topology.model import Topology

log = logging.getLogger(__name__)

OK, RETRIED, DEAD, DUPLICATE = "ok", "retried", "dead", "duplicate"


class Runtime:
    """Runs one subscriber of the topology: `await rt.start()`, later `await rt.stop()`."""

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
    ) -> None:
        self.topology = topology
        self.sub = topology.subscriber(name)
        self.router = router
        self.url = url
        self.store = store
        self.metrics = metrics or Metrics.default()
        self.lease = lease
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._handoff: HandOff | None = None
        self._acks = Acker()
        self._claims = Claims(store, self.sub.name, lease)
        self._counters: dict[tuple[str, str], Any] = {}
        self._timers: dict[str, Any] = {}
        self._consumer: Consumer | None = None
        self._publisher: Publisher | None = None
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._validators: dict[str, jsonschema.protocols.Validator | None] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._connection = await connect(self.url, f"subscriber:{self.sub.name}")
        self._publisher = Publisher(
            self.url, self.topology, source=self.sub.name, metrics=self.metrics,
            connection=self._connection,
        )  # fmt: skip
        await self._publisher.connect()
        self._handoff = HandOff(
            await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        )
        channel = await self._connection.channel(publisher_confirms=False)
        assert isinstance(channel, AbstractRobustChannel)
        self._channel = channel
        await channel.set_qos(prefetch_count=self.sub.prefetch)
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
        self.metrics.ready.labels(self.sub.name).set(1)
        log.info(
            "subscriber %s consuming %s (prefetch %d)", self.sub.name, self.sub.queue,
            self.sub.prefetch, extra={"subscriber": self.sub.name},
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
        self.metrics.ready.labels(self.sub.name).set(0)
        if self._consumer is not None:
            await self._consumer.cancel()
        drained = True
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            drained = False
            log.warning("%d handlers still running after %.0fs grace", self._inflight, grace)
        await self._acks.drain()
        await self._claims.stop()
        if self._publisher is not None:
            await self._publisher.close()
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()
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
            await self._handle(message)
        except Exception:  # a bug or a store outage must not kill the consumer
            log.exception("unexpected error handling a delivery; returning it to the queue")
            await asyncio.sleep(1.0)  # a brake: a persistent fault must not become a hot loop
            self._acks.settled(message)
            try:
                await message.nack(requeue=True)
            except Exception:  # a dead channel requeues it anyway
                log.debug("nack failed", exc_info=True)
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def _handle(self, m: Delivery) -> None:
        attempt = attempt_of(m.headers)
        try:
            meta = decode_meta(
                message_id=m.message_id, type=m.type, app_id=m.app_id, timestamp=m.timestamp,
                correlation_id=m.correlation_id, headers=m.headers,
            )  # fmt: skip
        except InvalidEvent as exc:
            await self._hand_off(
                m, dead(self.sub, DeadReason.INVALID), attempt, None, str(exc), "unknown"
            )
            return
        handler = self.router.match(meta.type)
        if handler is None:
            reason = f"no handler for event type {meta.type!r} in subscriber {self.sub.name!r}"
            await self._hand_off(
                m, dead(self.sub, DeadReason.NO_HANDLER), attempt, None, reason, meta.type
            )
            return
        try:
            event = self._parse(handler, meta.type, m.body)
        except (InvalidEvent, ValidationError) as exc:
            await self._hand_off(
                m,
                dead(self.sub, DeadReason.INVALID),
                attempt,
                handler,
                _short(exc),
                meta.type,
            )
            return
        await self._run(m, meta, handler, event, attempt)

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

    async def _run(
        self, m: Delivery, meta: Meta, handler: Handler, event: Any, attempt: int
    ) -> None:
        assert self._publisher is not None
        ctx = Context(meta, attempt, self.sub.name, m.routing_key, m.headers, self._publisher)
        if await self._claims.claim(meta.id) is Claim.DONE:
            ctx.log.info("duplicate %s %s: already processed, acked", meta.type, meta.id)
            self._ack(m)
            self._count(meta.type, DUPLICATE)
            return
        started = time.perf_counter()
        try:
            if tracing.active():
                with tracing.process_span(self.sub.queue, meta.id, m.routing_key,
                                          meta.traceparent, attempt):  # fmt: skip
                    await handler.func(event, ctx)
            else:
                await handler.func(event, ctx)
        except Reject as exc:
            await self._claims.release(meta.id)
            ctx.log.warning("rejected %s %s: %s", meta.type, meta.id, exc.reason)
            decision: Decision = dead(self.sub, DeadReason.REJECTED)
            await self._hand_off(m, decision, attempt, handler, exc, meta.type)
        except Exception as exc:
            await self._claims.release(meta.id)
            ctx.log.warning("handler %s failed on attempt %d: %s: %s", handler.name, attempt,
                            type(exc).__name__, exc)  # fmt: skip
            await self._hand_off(m, after_failure(self.sub, attempt), attempt, handler, exc,
                                 meta.type)  # fmt: skip
        else:
            await self._claims.complete(meta.id)
            self._ack(m)
            self._count(meta.type, OK)
        finally:
            self._observe(meta.type, time.perf_counter() - started)

    def _parse(self, handler: Handler, event_type: str, body: bytes) -> Any:
        validator = self._validator(event_type)
        if validator is None and handler.adapter is not None:
            return handler.parse_json(body)  # one pass: bytes -> model
        data = decode_body(body)
        if validator is not None:
            error = jsonschema.exceptions.best_match(validator.iter_errors(data))
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "(root)"
                raise InvalidEvent(f"fails the {event_type} schema at {where}: {error.message}")
        return handler.parse_data(data)

    def _validator(self, event_type: str) -> jsonschema.protocols.Validator | None:
        if event_type not in self._validators:
            spec = self.topology.events.get(event_type)
            schema = spec.json_schema if spec else None
            self._validators[event_type] = (
                jsonschema.Draft202012Validator(schema) if schema is not None else None
            )
        return self._validators[event_type]

    # -- acks and hand-offs ------------------------------------------------------------------

    def _ack(self, m: Delivery) -> None:
        """Ack soon, coalesced with neighbours (see bus.acks). If the channel dies first, the
        broker redelivers and the idempotency store absorbs the copy."""
        self._acks.ack(m)

    async def _hand_off(
        self,
        m: Delivery,
        decision: Decision,
        attempt: int,
        handler: Handler | None,
        error: BaseException | str,
        event_type: str,
    ) -> None:
        headers = failure_headers(
            m.headers, decision=decision, attempt=attempt, subscriber=self.sub.name,
            handler=handler.name if handler else None, error=error, now=datetime.now(UTC),
            exchange=m.exchange, routing_key=m.routing_key,
        )  # fmt: skip
        outcome = DEAD if isinstance(decision, DeadLetter) else RETRIED
        try:
            await self._republish(m, decision.queue, headers)
        except Exception as exc:
            # Could not hand off. Reject without requeue: the queue's own dead-letter route
            # parks the message in Q.dlq (without our headers), so it is never lost.
            log.error("hand-off of %s to %s failed (%s); rejecting it to %s",
                      m.message_id, decision.queue, exc, self.sub.dlq)  # fmt: skip
            self._acks.settled(m)
            try:
                await m.reject(requeue=False)
            except Exception:
                log.warning("reject of %s failed: it will be redelivered", m.message_id)
            self._count(event_type, DEAD)
            return
        self._ack(m)
        self._count(event_type, outcome)
        if isinstance(decision, DeadLetter):
            log.warning("parked %s in %s (%s)", m.message_id, decision.queue, decision.reason,
                        extra={"event_id": m.message_id, "subscriber": self.sub.name})  # fmt: skip

    async def _republish(self, m: Delivery, queue: str, headers: dict[str, Any]) -> None:
        assert self._handoff is not None
        await self._handoff.republish(m, queue, headers)


def _short(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        return f"invalid event: {exc.error_count()} error(s), first at {where}: {first['msg']}"
    return str(exc)
