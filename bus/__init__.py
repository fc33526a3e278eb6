"""bus: a Python event bus over RabbitMQ.

from bus import Publisher, SyncPublisher, Outbox, Router, Context, Reject
(SyncContext, ProcessContext: the ctx of thread and process handlers)
"""

from bus.batches import BatchContext
from bus.context import Context, ProcessContext, SyncContext
from bus.errors import (
    BrokerUnavailable,
    BusError,
    ConfigError,
    HandlerTimeout,
    InvalidEvent,
    PublishError,
    PublishTimeout,
    Reject,
    TopologyError,
    UnknownEventType,
    UnroutableError,
)
from bus.outbox import Outbox
from bus.publisher import Publisher, SyncPublisher
from bus.router import Router

__all__ = [
    "BatchContext",
    "BrokerUnavailable",
    "BusError",
    "ConfigError",
    "Context",
    "HandlerTimeout",
    "InvalidEvent",
    "Outbox",
    "ProcessContext",
    "PublishError",
    "PublishTimeout",
    "Publisher",
    "Reject",
    "Router",
    "SyncContext",
    "SyncPublisher",
    "TopologyError",
    "UnknownEventType",
    "UnroutableError",
]
