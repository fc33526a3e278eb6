"""What a handler knows about the event it handles, and how it publishes follow-ups.

`Context` is for `async def` handlers; `SyncContext` wraps it for a plain `def` in a thread
(its `publish` blocks until the broker confirmed); `ProcessContext` is the picklable snapshot
a process handler gets (its `publish` records the follow-up, which the subscriber publishes
once the handler has returned).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from bus.envelope import Meta, new_traceparent
from bus.produce.publishes import Publishes
from bus.topology.delays import Delay

_FOLLOW_UP = uuid.UUID("6b7a1c3e-1f0e-4d1e-9a55-8b5f2c0de001")


class Context:
    """Passed to every handler as its second argument."""

    __slots__ = ("_log", "_published", "attempt", "headers", "meta", "publisher", "routing_key",
                 "sagas", "subscriber")  # fmt: skip

    def __init__(
        self,
        meta: Meta,
        attempt: int,
        subscriber: str,
        routing_key: str,
        headers: Mapping[str, Any],
        publisher: Publishes,
        sagas: Any = None,
    ) -> None:
        self.meta = meta
        self.attempt = attempt
        self.subscriber = subscriber
        self.routing_key = routing_key
        self.headers = headers
        self.publisher = publisher
        self.sagas = sagas  # the subscriber's saga host (bus.sagas), if it hosts sagas
        self._log: logging.LoggerAdapter[logging.Logger] | None = None
        self._published: Counter[str] | None = None

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose lines carry this message's id, type, subscriber, attempt, correlation."""
        if self._log is None:
            self._log = message_logger(self)
        return self._log

    @property
    def id(self) -> str:
        return self.meta.id

    @property
    def type(self) -> str:
        return self.meta.type

    @property
    def source(self) -> str:
        return self.meta.source

    @property
    def time(self) -> datetime | None:
        return self.meta.time

    @property
    def correlation_id(self) -> str:
        """The id of the conversation: inherited, or this event's id when it started one."""
        return self.meta.correlation_id or self.meta.id

    async def publish(
        self, event_type: str, data: Any, *, id: str | None = None, delay: Delay | None = None
    ) -> str:
        """Publish a follow-up event caused by this one (after *delay*, if given: "3d").

        It carries this event's correlation id, its id as causation id, and its trace. Its id
        is derived from this event's id, so a retried handler publishes the same follow-up id
        and downstream subscribers see one event, not one per attempt.
        """
        if self._published is None:
            self._published = Counter()
        n = self._published[event_type]
        self._published[event_type] += 1
        follow_id = id or follow_up_id(self.subscriber, self.id, event_type, n)
        return await self.publisher.publish(
            event_type,
            data,
            id=follow_id,
            correlation_id=self.correlation_id,
            causation_id=self.id,
            traceparent=new_traceparent(self.meta.traceparent),  # OTel's span wins if on
            delay=delay,
        )


def follow_up_id(subscriber: str, event_id: str, event_type: str, n: int) -> str:
    """The id of the *n*-th (from 0) *event_type* follow-up of *event_id* in *subscriber*."""
    return str(uuid.uuid5(_FOLLOW_UP, f"{subscriber}/{event_id}/{event_type}/{n}"))


class SyncContext:
    """The `Context` of a plain `def` handler running in a thread: `publish` blocks."""

    __slots__ = ("_ctx", "_loop")

    def __init__(self, ctx: Context, loop: asyncio.AbstractEventLoop) -> None:
        self._ctx = ctx
        self._loop = loop

    def __getattr__(self, name: str) -> Any:  # id, type, attempt, headers, log, ...
        return getattr(self._ctx, name)

    def publish(
        self, event_type: str, data: Any, *, id: str | None = None, delay: Delay | None = None
    ) -> str:
        """`Context.publish` from the handler's thread; returns once the broker confirmed."""
        done = asyncio.run_coroutine_threadsafe(
            self._ctx.publish(event_type, data, id=id, delay=delay), self._loop
        )
        return done.result()


class ProcessContext:
    """What a process handler gets as `ctx`: plain data, pickled into the worker process.

    `publish` records the follow-up (with the id `Context.publish` would give it); the
    subscriber publishes what was recorded after the handler returned, before the ack. A
    handler that raises publishes nothing.
    """

    def __init__(self, ctx: Context) -> None:
        self.id = ctx.id
        self.type = ctx.type
        self.source = ctx.source
        self.time = ctx.time
        self.attempt = ctx.attempt
        self.subscriber = ctx.subscriber
        self.routing_key = ctx.routing_key
        self.correlation_id = ctx.correlation_id
        self.headers = {k: v for k, v in ctx.headers.items() if _plain(v)}
        self.published: list[tuple[str, Any, str, Delay | None]] = []  # type, data, id, delay

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        return logging.LoggerAdapter(
            logging.getLogger("bus.consume.runtime"),
            {"event_id": self.id, "event_type": self.type, "subscriber": self.subscriber,
             "attempt": self.attempt, "correlation_id": self.correlation_id},
        )  # fmt: skip

    def publish(
        self, event_type: str, data: Any, *, id: str | None = None, delay: Delay | None = None
    ) -> str:
        """Record a follow-up event; it is published when the handler has returned."""
        n = sum(1 for p in self.published if p[0] == event_type)
        follow_id = id or follow_up_id(self.subscriber, self.id, event_type, n)
        self.published.append((event_type, data, follow_id, delay))
        return follow_id


def _plain(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | bytes | type(None))


def message_logger(ctx: Context) -> logging.LoggerAdapter[logging.Logger]:
    return logging.LoggerAdapter(
        logging.getLogger("bus.consume.runtime"),
        {
            "event_id": ctx.meta.id,
            "event_type": ctx.meta.type,
            "subscriber": ctx.subscriber,
            "attempt": ctx.attempt,
            "correlation_id": ctx.correlation_id,
        },
    )
