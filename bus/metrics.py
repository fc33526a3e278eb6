"""Prometheus metrics (prefix `bus_`). Definitions only; `bus.ops.health` serves them."""

from __future__ import annotations

from functools import cache

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

UNDECLARED = "undeclared"  # the `type` label of a delivery whose type the topology lacks


def type_label(event_type: str, declared: frozenset[str]) -> str:
    """*event_type* when the topology declares it, else `undeclared`: a delivery's type comes
    from whoever published it, and a label per made-up type would grow without bound."""
    return event_type if event_type in declared else UNDECLARED


class Metrics:
    """The bus's metrics in one registry. Pass one explicitly, or use `Metrics.default()`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.published = Counter("bus_published_total", "Events published", ["type"], registry=r)
        self.consumed = Counter(
            "bus_consumed_total",
            "Deliveries handled, by outcome (ok|retried|dead|duplicate)",
            ["subscriber", "type", "outcome"],
            registry=r,
        )
        self.handler_seconds = Histogram(
            "bus_handler_seconds", "Handler run time", ["subscriber", "type"], registry=r
        )
        self.queue_messages = Gauge(
            "bus_queue_messages", "Ready messages in a queue", ["queue"], registry=r
        )
        self.dlq_oldest_age = Gauge(
            "bus_dlq_oldest_message_age_seconds",
            "Age of the oldest message in a subscriber's DLQ (0 when empty)",
            ["queue"],
            registry=r,
        )
        self.confirm_seconds = Histogram(
            "bus_publish_confirm_seconds",
            "Time from publish to broker confirm",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.broker_blocked = Gauge(
            "bus_broker_blocked",
            "1 while the broker blocks this process's publishing (connection.blocked: a memory "
            "or disk alarm); the number of blocked connections if several",
            registry=r,
        )
        self.ready = Gauge(
            "bus_ready", "1 while connected and consuming", ["subscriber"], registry=r
        )
        self.outbox_pending = Gauge(
            "bus_outbox_pending", "Outbox rows waiting for a relay", registry=r
        )
        self.outbox_oldest_age = Gauge(
            "bus_outbox_oldest_age_seconds",
            "Age of the oldest outbox row waiting for a relay (0 when none)",
            registry=r,
        )
        self.outbox_set_aside = Gauge(
            "bus_outbox_set_aside", "Outbox rows the relay could not publish, kept", registry=r
        )
        self.held_keys = Gauge(
            "bus_ordering_held_keys",
            "Keys of an ordered subscriber held back behind an event on the retry ladder",
            ["subscriber"], registry=r,
        )  # fmt: skip
        self.oldest_hold = Gauge(
            "bus_ordering_oldest_hold_seconds",
            "Seconds the longest-held key of an ordered subscriber has waited",
            ["subscriber"], registry=r,
        )  # fmt: skip
        self.saga_instances = Gauge(
            "bus_saga_instances", "Saga instances in the store, by status (running|completed)",
            ["subscriber", "saga", "status"], registry=r,
        )  # fmt: skip
        self.saga_steps = Counter(
            "bus_saga_steps_total",
            "Saga events handled, by outcome (ok|ignored|no-saga)",
            ["subscriber", "saga", "outcome"],
            registry=r,
        )
        self.saga_conflicts = Counter(
            "bus_saga_conflicts_total",
            "Saga steps run again because another step of the instance committed first",
            ["subscriber", "saga"],
            registry=r,
        )
        self.saga_step_seconds = Histogram(
            "bus_saga_step_seconds", "Saga step time, from load to commit (reruns included)",
            ["subscriber", "saga"], registry=r,
        )  # fmt: skip
        self.relay_published = Counter(
            "bus_relay_published_total", "Outbox rows published and removed", ["type"], registry=r
        )
        self.replayed = Counter(
            "bus_replayed_total",
            "History events copied into a subscriber's queue (bus replay, backfill)",
            ["subscriber", "type"],
            registry=r,
        )
        self.relay_ready = Gauge(
            "bus_relay_ready",
            "1 while the relay reaches both the outbox and the broker",
            registry=r,
        )

    @staticmethod
    @cache
    def default() -> Metrics:
        """Metrics on prometheus-client's global registry, created on first use."""
        return Metrics(REGISTRY)
