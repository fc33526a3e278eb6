"""bus: a Python event bus over RabbitMQ.

from bus import Publisher, SyncPublisher, Outbox, Router, Context, Reject
"""

from bus.context import Context
from bus.errors import (
    BrokerUnavailable,
    BusError,
    ConfigError,
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
    "BrokerUnavailable",
    "BusError",
    "ConfigError",
    "Context",
    "InvalidEvent",
    "Outbox",
    "PublishError",
    "PublishTimeout",
    "Publisher",
    "Reject",
    "Router",
    "SyncPublisher",
    "TopologyError",
    "UnknownEventType",
    "UnroutableError",
]
