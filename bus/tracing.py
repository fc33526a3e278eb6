"""OpenTelemetry spans, when the optional `otel` extra is installed (`pip install bus[otel]`).

Spans follow the OpenTelemetry messaging conventions for RabbitMQ: `publish <exchange>` (kind
PRODUCER) around each publish, whose context is written as the message's `traceparent`, and
`process <queue>` (kind CONSUMER) around each handler, continuing the producer's trace. Without
OpenTelemetry (or without an SDK configured) the bus still writes and continues W3C
`traceparent` headers itself, and this module costs a clock read per message.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind
except ImportError:  # the extra is not installed
    trace = None  # type: ignore[assignment]

_SYSTEM: dict[str, Any] = {"messaging.system": "rabbitmq"}


_RECHECK = 1.0  # seconds between looks while no SDK provider is installed
_installed = False
_next_look = 0.0


def active() -> bool:
    """True once the application installed an OpenTelemetry SDK tracer provider.

    Asked for every message, so it looks at OpenTelemetry (a global and an environment lookup)
    at most once a second until a provider is there; OpenTelemetry lets a provider be set only
    once, so from then on the answer is cached for good. A provider installed after the first
    message is seen within a second.
    """
    global _installed, _next_look
    if _installed or trace is None:
        return _installed
    now = time.monotonic()
    if now < _next_look:
        return False
    _next_look = now + _RECHECK
    _installed = not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    return _installed


def current_traceparent() -> str | None:
    """The `traceparent` of the span the caller is in (an API request, say), or None."""
    if not active():
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


@contextlib.contextmanager
def publish_span(
    exchange: str, routing_key: str, event_id: str, parent: str | None = None
) -> Iterator[str | None]:
    """A PRODUCER span; yields the `traceparent` to send, or None when nothing is recording.

    Its parent is the caller's current span; without one (a relay publishing an outbox row),
    the event's own *parent* `traceparent`, so the trace begun in the writer's request goes on.
    """
    tracer = trace.get_tracer("bus")
    context = None
    if parent and not trace.get_current_span().get_span_context().is_valid:
        context = propagate.extract({"traceparent": parent})
    attributes: dict[str, Any] = {
        **_SYSTEM,
        "messaging.operation.type": "send",
        "messaging.destination.name": exchange,
        "messaging.rabbitmq.destination.routing_key": routing_key,
        "messaging.message.id": event_id,
    }
    with tracer.start_as_current_span(
        f"publish {exchange}", context=context, kind=SpanKind.PRODUCER, attributes=attributes
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield carrier.get("traceparent")


@contextlib.contextmanager
def process_span(
    queue: str, event_id: str, routing_key: str, traceparent: str | None, attempt: int
) -> Iterator[Any]:
    """A CONSUMER span around a handler, continuing the producer's trace."""
    tracer = trace.get_tracer("bus")
    parent = propagate.extract({"traceparent": traceparent}) if traceparent else None
    attributes: dict[str, Any] = {
        **_SYSTEM,
        "messaging.operation.type": "process",
        "messaging.destination.name": queue,
        "messaging.rabbitmq.destination.routing_key": routing_key,
        "messaging.message.id": event_id,
        "messaging.message.delivery_attempt": attempt,
    }
    with tracer.start_as_current_span(
        f"process {queue}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes,
        record_exception=True, set_status_on_exception=True,
    ) as span:  # fmt: skip
        yield span
