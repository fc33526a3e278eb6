"""The topology as other tools read it: RabbitMQ definitions JSON and an AsyncAPI 3.0 document.

Pure logic, like `bus.topology.plan`: both documents are built from `plan.desired()`, the very
objects `bus topology apply` declares, so an export can never disagree with `apply`.

`definitions()` is importable with ``rabbitmqctl import_definitions FILE`` (or the management
UI / ``load_definitions``). With ``users=True`` it adds one user per subscriber, allowed to touch
only its own queues and to publish (topic permissions) only the event types its `publishes:`
lists, and a producer user (the API, the relay, the scheduler) that may publish the declared
event types and nothing else. When an exchange keeps a history, a `history` user (`bus
history`, `bus replay`) may read the logs and write only through the default exchange. Users
are created *without a password* (``password_hash: ""``
refuses password logins) until an operator sets one with ``rabbitmqctl change_password NAME
PASSWORD``, so no secret ever lives in the exported file.

RabbitMQ lets a user without topic permissions on an exchange publish any routing key, so every
user gets one per topic exchange (``^$`` where it may publish nothing). Topic permissions apply
to topic exchanges only; on fanout and direct exchanges the `write` permission is the limit.

Delayed events (`bus.topology.delays`) are published to a delay level, a topic exchange whose
routing keys are the delay's bits, then the event's exchange and type: every user gets a topic
permission on each level too, for the same event types. Nobody may write to the level below
the last, `bus.delay.deliver`: a client never publishes there, and a key written there would
reach the event's exchange without its type being checked.
"""

from __future__ import annotations

import json
import re
from typing import Any

import bus.topology.delays as delays
from bus.envelope import H_ID, H_SOURCE, H_SPECVERSION, H_TIME, H_TYPE
from bus.topology.model import ExchangeType, Subscriber, Topology
from bus.topology.plan import (
    BindingDecl,
    ExchangeBindingDecl,
    ExchangeDecl,
    QueueDecl,
    desired,
)
from bus.topology.release import OLDEST, Release

HASHING_ALGORITHM = "rabbit_password_hashing_sha256"
DEFAULT_EXCHANGE = "amq.default"  # the resource name RabbitMQ checks for publishes to ""
PRODUCER_USER = "producer"
HISTORY_USER = "history"  # `bus history` and `bus replay`, when an exchange keeps a history
NOTHING = "^$"  # a permission regex that grants no name (and no routing key but the empty one)
ASYNCAPI_VERSION = "3.0.0"
AMQP_BINDING_VERSION = "0.3.0"


def to_json(document: dict[str, Any]) -> str:
    """*document* as stable, diff-friendly JSON text ending in a newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


# --- RabbitMQ definitions ---------------------------------------------------------------------


def definitions(
    topology: Topology, *, vhost: str = "/", users: bool = False, release: Release = OLDEST
) -> dict[str, Any]:
    """RabbitMQ definitions of every exchange, queue and binding `apply` would declare on a
    broker of *release* (a DLQ's delivery limit depends on it)."""
    decls = desired(topology, release)
    doc: dict[str, Any] = {"vhosts": [{"name": vhost}]}
    if users:
        subs = topology.subscribers()
        # every exchange a client may publish to: not the delay levels' last hop (see above)
        exchanges = [
            d.name for d in decls if isinstance(d, ExchangeDecl) and d.name != delays.DELIVER
        ]
        doc["users"] = [_user(s.name) for s in subs] + [_user(PRODUCER_USER)]
        doc["permissions"] = [_permission(s, vhost, exchanges) for s in subs]
        doc["permissions"].append(_producer_permission(topology, vhost))
        doc["topic_permissions"] = [
            *(p for s in subs for p in _topic_permissions(topology, s.name, s.publishes, vhost)),
            *_topic_permissions(topology, PRODUCER_USER, tuple(topology.events), vhost),
        ]
        if topology.histories():
            doc["users"].append(_user(HISTORY_USER))
            doc["permissions"].append(history_permission(topology, vhost))
            doc["topic_permissions"] += _topic_permissions(topology, HISTORY_USER, (), vhost)
    doc["exchanges"] = [_exchange(d, vhost) for d in decls if isinstance(d, ExchangeDecl)]
    doc["queues"] = [_queue(d, vhost) for d in decls if isinstance(d, QueueDecl)]
    doc["bindings"] = [
        _binding(d, vhost) for d in decls if isinstance(d, BindingDecl | ExchangeBindingDecl)
    ]
    return doc


def _exchange(d: ExchangeDecl, vhost: str) -> dict[str, Any]:
    return {
        "name": d.name,
        "vhost": vhost,
        "type": d.type,
        "durable": True,
        "auto_delete": False,
        "internal": False,
        "arguments": dict(sorted(d.arguments.items())),
    }


def _queue(d: QueueDecl, vhost: str) -> dict[str, Any]:
    return {
        "name": d.name,
        "vhost": vhost,
        "durable": True,
        "auto_delete": False,
        "arguments": dict(sorted(d.arguments.items())),
    }


def _binding(d: BindingDecl | ExchangeBindingDecl, vhost: str) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if isinstance(d, ExchangeBindingDecl):  # a delay level, or a subscriber's partition exchange
        source, destination, kind = d.source, d.destination, "exchange"
    else:
        source, destination, kind = d.exchange, d.queue, "queue"
        args = dict(sorted(d.arguments.items()))
    return {
        "source": source,
        "vhost": vhost,
        "destination": destination,
        "destination_type": kind,
        "routing_key": d.routing_key,
        "arguments": args,
    }


def _user(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "password_hash": "",  # no password login until `rabbitmqctl change_password`
        "hashing_algorithm": HASHING_ALGORITHM,
        "tags": [],
    }


def own_queues_regex(sub: Subscriber) -> str:
    """Matches `Q`, `Q.retry.<delay>` and `Q.dlq` of *sub*, and nothing else."""
    return rf"^{re.escape(sub.queue)}(\.retry\..*|\.dlq)?$"


def _permission(sub: Subscriber, vhost: str, exchanges: list[str]) -> dict[str, Any]:
    own = own_queues_regex(sub)
    # Writes: the retry hand-off and the DLQ publish through the default exchange (checked as
    # `amq.default`); `ctx.publish` sends events to the declared exchanges.
    targets = [own[1:-1], *(re.escape(x) for x in [*exchanges, DEFAULT_EXCHANGE])]
    return {
        "user": sub.name,
        "vhost": vhost,
        "configure": own,
        "write": "^(" + "|".join(targets) + ")$",
        "read": own,
    }


def _producer_permission(topology: Topology, vhost: str) -> dict[str, Any]:
    """The producer writes to the exchanges of the declared events: no queue, no default
    exchange (so never straight into a queue), nothing to configure or read."""
    exchanges = sorted({ev.exchange for ev in topology.events.values()})
    exchanges += [delays.level_exchange(level) for level in range(delays.LEVELS)]
    return {
        "user": PRODUCER_USER,
        "vhost": vhost,
        "configure": NOTHING,
        "write": _any_of(exchanges),
        "read": NOTHING,
    }


def history_permission(topology: Topology, vhost: str) -> dict[str, Any]:
    """`bus history` and `bus replay` read the logs (`<exchange>.history`) and nothing else:
    no other queue, no configure. They write through the default exchange only: a reader's
    end-of-log marker into a log, a replay's copies into one subscriber's queue; never to an
    exchange, so they publish no event anywhere else."""
    return {
        "user": HISTORY_USER,
        "vhost": vhost,
        "configure": NOTHING,
        "write": _any_of([DEFAULT_EXCHANGE]),
        "read": _any_of([h.stream for h in topology.histories()]),
    }


def _topic_permissions(
    topology: Topology, user: str, may_publish: tuple[str, ...], vhost: str
) -> list[dict[str, Any]]:
    """One per topic exchange: the routing keys (event types) *user* may publish there."""
    out = []
    for name, spec in topology.exchanges.items():
        if spec.type != ExchangeType.TOPIC:
            continue
        keys = [t for t in may_publish if topology.events[t].exchange == name]
        out.append(
            {
                "user": user,
                "vhost": vhost,
                "exchange": name,
                "write": _any_of(keys) if keys else NOTHING,
                "read": NOTHING,  # binding keys: `bus topology apply` binds, no service does
            }
        )
    # a delayed event: the delay's bits, then the event's exchange and type (delays.route)
    targets = [f"{topology.events[t].exchange}.{t}" for t in may_publish]
    delayed = rf"^([01]\.){{{delays.LEVELS}}}({'|'.join(map(re.escape, targets))})$"
    for level in range(delays.LEVELS):
        out.append(
            {
                "user": user,
                "vhost": vhost,
                "exchange": delays.level_exchange(level),
                "write": delayed if targets else NOTHING,
                "read": NOTHING,
            }
        )
    return out


def _any_of(names: list[str]) -> str:
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


# --- AsyncAPI ---------------------------------------------------------------------------------


def asyncapi(
    topology: Topology, *, title: str = "bus events", version: str = "1"
) -> dict[str, Any]:
    """An AsyncAPI 3.0 document: one channel per event type, one `receive` operation per
    subscriber and event it is bound to, one `send` operation per event type (the producers)."""
    decls = desired(topology)
    exchange_types = {d.name: d.type for d in decls if isinstance(d, ExchangeDecl)}
    subs = {s.name: s for s in topology.subscribers()}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for etype, ev in topology.events.items():
        channels[etype] = {
            "address": etype,
            "description": ev.description or f"The {etype} event.",
            "messages": {etype: {"$ref": f"#/components/messages/{etype}"}},
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": {
                        "name": ev.exchange,
                        "type": exchange_types[ev.exchange],
                        "durable": True,
                        "autoDelete": False,
                        "vhost": "/",
                    },
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            },
        }
        history = topology.history(ev.exchange)
        if history is not None:  # the exchange's log keeps this event too
            channels[etype]["x-bus-history"] = {
                "stream": history.stream,
                "max_age": history.max_age,
                "max_bytes": history.max_bytes,
            }
        messages[etype] = _message(etype, ev.description, ev.json_schema)
        channel_ref = {"$ref": f"#/channels/{etype}"}
        message_ref = {"$ref": f"#/channels/{etype}/messages/{etype}"}
        operations[f"send.{etype}"] = {
            "action": "send",
            "channel": channel_ref,
            "summary": f"Publish {etype} to exchange {ev.exchange} with routing key {etype}.",
            "messages": [message_ref],
        }
        for sub in topology.receivers(etype):  # through its queue or its partition exchange
            operations[f"{sub.name}.receive.{etype}"] = _receive(subs[sub.name], etype, message_ref)
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": f"Events of {topology.source}, generated by `bus topology export`.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def _receive(sub: Subscriber, etype: str, message_ref: dict[str, str]) -> dict[str, Any]:
    return {
        "action": "receive",
        "channel": {"$ref": f"#/channels/{etype}"},
        "summary": f"{sub.name} consumes {etype} from queue {sub.queue}.",
        "messages": [message_ref],
        "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}},
        "x-bus-queue": {
            "name": sub.queue,
            "type": str(sub.queue_type),
            "retry": list(sub.retry_queues),
            "dlq": sub.dlq,
        },
    }


def _message(etype: str, description: str, schema: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "name": etype,
        "title": etype,
        "summary": description or etype,
        "contentType": "application/json",
        "headers": _HEADERS,
        "payload": schema if schema is not None else {"type": "object"},
        "bindings": {"amqp": {"messageType": etype, "bindingVersion": AMQP_BINDING_VERSION}},
    }


_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": "CloudEvents attributes in AMQP headers; message_id and type properties too.",
    "properties": {
        H_SPECVERSION: {"type": "string", "const": "1.0"},
        H_ID: {"type": "string", "description": "The event id, also the message_id."},
        H_SOURCE: {"type": "string", "description": "The producer, also the app_id."},
        H_TYPE: {"type": "string", "description": "The event type, also the routing key."},
        H_TIME: {"type": "string", "format": "date-time"},
        "traceparent": {"type": "string", "description": "W3C trace context, when tracing."},
    },
}
