"""What publishing an event takes, as a type: `Publisher.publish`'s arguments.

`bus.Publisher` has it, and so does TestBus in memory; a handler's `ctx.publish` and a saga
host's effects publish through whichever of them the subscriber runs on.
"""

from __future__ import annotations

from typing import Any, Protocol

from bus.topology.delays import Delay


class Publishes(Protocol):
    """`bus.Publisher`, or `bus.testing.TestBus` (and its per-subscriber source) in memory."""

    async def publish(
        self,
        event_type: str,
        data: Any,
        *,
        id: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        traceparent: str | None = None,
        delay: Delay | None = None,
    ) -> str: ...
