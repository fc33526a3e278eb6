"""bus: a Python event bus over RabbitMQ.

from bus import Publisher, SyncPublisher, Outbox, Router, Context, Reject
(SyncContext, ProcessContext: the ctx of thread and process handlers; Saga, SagaContext:
long-lived flows, one instance per key)
"""

__version__ = "0.1.0"  # the one place: pyproject.toml reads it, `bus --version` prints it

from bus.consume.batches import BatchContext
from bus.consume.context import Context, ProcessContext, SyncContext
from bus.consume.router import Router
from bus.errors import (
    BrokerUnavailable,
    BusError,
    ConfigError,
    DatabaseUnavailable,
    HandlerTimeout,
    InvalidEvent,
    PublishError,
    PublishTimeout,
    Reject,
    TopologyError,
    UnknownEventType,
    UnroutableError,
)
from bus.history import History, HistoryEvent
from bus.outbox import Outbox
from bus.produce.publisher import Publisher
from bus.produce.sync import SyncPublisher
from bus.sagas import Saga, SagaContext

__all__ = [
    "BatchContext",
    "BrokerUnavailable",
    "BusError",
    "ConfigError",
    "Context",
    "DatabaseUnavailable",
    "HandlerTimeout",
    "History",
    "HistoryEvent",
    "InvalidEvent",
    "Outbox",
    "ProcessContext",
    "PublishError",
    "PublishTimeout",
    "Publisher",
    "Reject",
    "Router",
    "Saga",
    "SagaContext",
    "SyncContext",
    "SyncPublisher",
    "TopologyError",
    "UnknownEventType",
    "UnroutableError",
]
