"""Delayed events on the broker alone: binary delay levels (the design NServiceBus proved).

A delay of *n* whole seconds is written in binary into the routing key, most significant bit
first, followed by the event's exchange and type: 5 s to `order.placed` on `events` is
``0.0.….1.0.1.events.order.placed`` (`LEVELS` bits). Level *k* is a topic exchange
`bus.delay.<k>`: a key whose bit *k* is 1 goes to the queue `bus.delay.<k>.<2^k s>`, whose
`x-message-ttl` is 2^k seconds and which dead-letters into level *k-1*; a key whose bit *k* is
0 passes straight on to level *k-1* (an exchange-to-exchange binding). Below level 0 the
exchange `bus.delay.deliver` routes on the tail of the key to `bus.delay.out.<exchange>.<type>`,
a queue with a TTL of 0 that dead-letters into the event's own exchange with the event type as
routing key: every subscriber bound *then* gets a copy, as if it had been published then.

So nothing holds the message but the broker (no consumer, no timer process), each queue has
one TTL (no head-of-line blocking, never a per-message TTL), a delay costs at most `LEVELS`
hops of a few milliseconds, and the queues are durable quorum queues with at-least-once
dead-lettering: a delay survives a broker restart. Delays are whole seconds, rounded up; the
longest is 2^LEVELS - 1 seconds (`MAX_DELAY`).
"""

from __future__ import annotations

from datetime import timedelta

from bus.durations import label, parse_ms

LEVELS = 24
MAX_DELAY = 2**LEVELS - 1  # seconds: 194 days, 4 h 20 min 15 s
PREFIX = "bus.delay"
DELIVER = f"{PREFIX}.deliver"

Delay = str | int | float | timedelta  # "24h", seconds, or a timedelta


def seconds_of(delay: Delay) -> int:
    """Whole seconds, rounded up; ValueError when not positive or over `MAX_DELAY`."""
    if isinstance(delay, timedelta):
        ms = delay.total_seconds() * 1000
    elif isinstance(delay, str):
        ms = parse_ms(delay)
    else:
        ms = float(delay) * 1000
    seconds = int(-(-ms // 1000))
    if seconds <= 0:
        raise ValueError(f"delay {delay!r} is not positive")
    if seconds > MAX_DELAY:
        raise ValueError(
            f"delay {delay!r} is over the longest delay, {MAX_DELAY} s ({MAX_DELAY // 86400} days)"
        )
    return seconds


def level_exchange(level: int) -> str:
    return f"{PREFIX}.{level}"


def level_queue(level: int) -> str:
    return f"{PREFIX}.{level}.{label(2**level * 1000)}"


def out_queue(exchange: str, event_type: str) -> str:
    return f"{PREFIX}.out.{exchange}.{event_type}"


def route(seconds: int, exchange: str, event_type: str) -> tuple[str, str]:
    """(exchange to publish to, routing key) for a delay of *seconds* (from `seconds_of`)."""
    bits = ".".join(format(seconds, f"0{LEVELS}b"))
    return level_exchange(seconds.bit_length() - 1), f"{bits}.{exchange}.{event_type}"


def level_key(level: int, bit: str) -> str:
    """The binding key of level *level* matching keys whose bit there is *bit*."""
    return ".".join(["*"] * (LEVELS - 1 - level) + [bit, "#"])


def deliver_key(exchange: str, event_type: str) -> str:
    return ".".join(["*"] * LEVELS + [exchange, event_type])
