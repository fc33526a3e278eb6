"""Every error the bus raises.

BusError                      base of all failures
├── MissingExtra              an optional dependency is not installed (names the extra)
├── ConfigError               bad settings or environment (exit code 2)
│   ├── NotApplied            an exchange or queue the topology declares is not on the broker
│   └── OutboxMissing         no outbox table (or SQLite file) yet: `bus outbox init`
├── TopologyError             the topology file is invalid; carries every problem at once
├── UnknownEventType          publish of a type the topology does not declare
├── InvalidEvent              data failing the event's JSON Schema, or a message we cannot decode
├── BrokerUnavailable         cannot reach RabbitMQ (URL is redacted)
├── DatabaseUnavailable       cannot reach the idempotency store's or the outbox's database
├── PublishError              the broker did not confirm a message
│   ├── UnroutableError       the message was returned: no queue is bound for it
│   └── PublishTimeout        no confirm before the deadline
├── HandlerTimeout            a handler ran over its subscriber's `timeout` (takes the ladder)
└── WorkerLost                a process handler's worker died under it (takes the ladder)

Reject                        control flow, not a failure: a handler's "park this in the DLQ now"
"""

from __future__ import annotations


class BusError(Exception):
    """Base class of every failure raised by the bus."""

    exit_code = 1


class MissingExtra(BusError):
    """A feature needs an optional dependency that is not installed: `pip install "bus[X]"`."""

    def __init__(self, message: str, extra: str) -> None:
        self.extra = extra
        super().__init__(message)


class ConfigError(BusError):
    """Settings or environment are wrong."""

    exit_code = 2


class NotApplied(ConfigError):
    """The broker lacks an exchange or queue of the topology: `bus topology apply` first."""


class NoHistory(ConfigError):
    """An exchange keeps no history (no `history:` in the topology, or its log is not applied)."""


class OutboxMissing(ConfigError):
    """The outbox's table (or its SQLite file) does not exist yet: `bus outbox init`."""


class TopologyError(BusError):
    """The topology file is invalid. `problems` holds every one, each as "path: message"."""

    exit_code = 2

    def __init__(self, problems: list[str], source: str = "topology") -> None:
        self.problems = problems
        self.source = source
        if len(problems) == 1:  # one problem, one line
            super().__init__(f"{source}: {problems[0]}")
            return
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problems\n{lines}")


class UnknownEventType(BusError):
    """The event type is not declared under `events:` in the topology."""

    exit_code = 2


class InvalidEvent(BusError):
    """The event's data fails its schema, or a delivered message cannot be decoded."""

    exit_code = 2


class BrokerUnavailable(BusError):
    """RabbitMQ does not answer at the configured URL."""


class DatabaseUnavailable(BusError):
    """The database of the idempotency store or of the outbox does not answer."""


class PublishError(BusError):
    """The broker did not confirm a published message."""


class UnroutableError(PublishError):
    """The broker returned a `mandatory` message: no queue is bound for its routing key."""


class PublishTimeout(PublishError):
    """No confirm arrived before the publish deadline."""


class HandlerTimeout(BusError):
    """A handler ran longer than its subscriber's `timeout`: it failed, and takes the ladder.

    On the loop the handler is cancelled; in a process its worker is killed and replaced; a
    thread cannot be stopped, so it runs on and its result is ignored.
    """

    __module__ = "bus"  # its name in `bus-exception-type`: bus.HandlerTimeout


class WorkerLost(BusError):
    """The worker process running a process handler died (killed, crashed, `os._exit`)."""


class Reject(Exception):
    """Raise in a handler to park the message in the DLQ at once, without retries."""

    def __init__(self, reason: str = "rejected by handler") -> None:
        self.reason = reason
        super().__init__(reason)


class NoSaga(Reject):
    """An event for a saga instance that does not exist, and that starts none: parked."""

    dead_reason = "no-saga"
