"""bus: a Python event bus over RabbitMQ.

from bus import Publisher, SyncPublisher, Router, Context, Reject
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
from bus.publisher import Publisher, SyncPublisher
from bus.router import Router

__all__ = [
    "BrokerUnavailable",
    "BusError",
    "ConfigError",
    "Context",
    "InvalidEvent",
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
