"""What a handler knows about the event it handles, and how it publishes follow-ups."""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bus.envelope import Meta, new_traceparent

if TYPE_CHECKING:
    from bus.publisher import Publisher

_FOLLOW_UP = uuid.UUID("6b7a1c3e-1f0e-4d1e-9a55-8b5f2c0de001")


@dataclass
class Context:
    """Passed to every handler as its second argument."""

    meta: Meta
    attempt: int
    subscriber: str
    routing_key: str
    headers: Mapping[str, Any]
    publisher: Publisher
    log: logging.LoggerAdapter[logging.Logger]
    _published: Counter[str] = field(default_factory=Counter, repr=False)

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

    async def publish(self, event_type: str, data: Any, *, id: str | None = None) -> str:
        """Publish a follow-up event caused by this one.

        It carries this event's correlation id, its id as causation id, and its trace. Its id
        is derived from this event's id, so a retried handler publishes the same follow-up id
        and downstream subscribers see one event, not one per attempt.
        """
        n = self._published[event_type]
        self._published[event_type] += 1
        follow_id = id or str(
            uuid.uuid5(_FOLLOW_UP, f"{self.subscriber}/{self.id}/{event_type}/{n}")
        )
        return await self.publisher.publish(
            event_type,
            data,
            id=follow_id,
            correlation_id=self.correlation_id,
            causation_id=self.id,
            traceparent=new_traceparent(self.meta.traceparent),
        )
