"""`bus topology export`: RabbitMQ definitions and AsyncAPI, both built from `plan.desired()`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import bus.topology.delays as delays
from bus.cli import app
from bus.topology import export
from bus.topology.model import Topology, from_dict, load
from bus.topology.plan import BindingDecl, ExchangeBindingDecl, ExchangeDecl, QueueDecl, desired

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = ROOT / "topology" / "topology.yaml"


@pytest.fixture
def topology() -> Topology:
    return load(TOPOLOGY)


def small(queue: str = "mail.out", queue_type: str = "quorum") -> Topology:
    return from_dict(
        {
            "version": 1,
            "defaults": {"queue_type": queue_type, "retry": {"delays": ["250ms", "5m"]}},
            "exchanges": {"events": {"type": "topic"}, "audit": {"type": "fanout"}},
            "events": {
                "order.placed": {"exchange": "events", "schema": {"type": "object"}},
                "order.shipped": {"exchange": "events"},
                "user.deleted": {"exchange": "audit"},
            },
            "subscribers": {
                "email": {
                    "handlers": "x:router",
                    "queue": queue,
                    "bindings": [{"exchange": "events", "keys": ["order.*"]}],
                },
                "auditor": {"handlers": "x:router", "bindings": [{"exchange": "audit"}]},
            },
        }
    )


# --- definitions ------------------------------------------------------------------------------


def test_definitions_hold_exactly_what_apply_declares(topology: Topology) -> None:
    doc = export.definitions(topology)
    want = desired(topology)
    assert [(e["name"], e["type"]) for e in doc["exchanges"]] == [
        (d.name, d.type) for d in want if isinstance(d, ExchangeDecl)
    ]
    assert {q["name"]: q["arguments"] for q in doc["queues"]} == {
        d.name: dict(d.arguments) for d in want if isinstance(d, QueueDecl)
    }
    assert [(b["source"], b["destination"], b["routing_key"]) for b in doc["bindings"]] == [
        (d.exchange, d.queue, d.routing_key) if isinstance(d, BindingDecl)
        else (d.source, d.destination, d.routing_key)
        for d in want if isinstance(d, BindingDecl | ExchangeBindingDecl)
    ]  # fmt: skip
    assert all(q["durable"] and not q["auto_delete"] for q in doc["queues"])
    assert all(e["durable"] for e in doc["exchanges"])
    kinds = {
        b["destination_type"] for b in doc["bindings"] if not b["source"].startswith("bus.delay.")
    }
    assert kinds == {"queue"}
    e2e = [b for b in doc["bindings"] if b["destination_type"] == "exchange"]
    assert len(e2e) == 24 and all(b["source"].startswith("bus.delay.") for b in e2e)
    assert "users" not in doc and "permissions" not in doc


def test_definitions_follow_the_contract_table(topology: Topology) -> None:
    queues = {q["name"]: q["arguments"] for q in export.definitions(topology)["queues"]}
    assert queues["email"]["x-dead-letter-exchange"] == ""
    assert queues["email"]["x-dead-letter-routing-key"] == "email.dlq"
    assert queues["email"]["x-queue-type"] == "quorum"
    assert queues["email"]["x-delivery-limit"] == 10
    assert queues["email.retry.1m"]["x-message-ttl"] == 60_000
    assert queues["email.retry.1m"]["x-dead-letter-routing-key"] == "email"
    assert "x-message-ttl" not in queues["email.dlq"]


def test_every_object_carries_the_chosen_vhost(topology: Topology) -> None:
    doc = export.definitions(topology, vhost="shop", users=True)
    assert doc["vhosts"] == [{"name": "shop"}]
    for part in ("exchanges", "queues", "bindings", "permissions", "topic_permissions"):
        assert {o["vhost"] for o in doc[part]} == {"shop"}, part


def test_each_subscriber_user_may_touch_only_its_own_queues() -> None:
    t = small(queue="mail.out")
    doc = export.definitions(t, users=True)
    assert [u["name"] for u in doc["users"]] == ["email", "auditor", "producer"]
    assert all(u["password_hash"] == "" for u in doc["users"]), "no secret in the export"
    perm = {p["user"]: p for p in doc["permissions"]}["email"]
    own = ["mail.out", "mail.out.retry.250ms", "mail.out.retry.5m", "mail.out.dlq"]
    foreign = ["auditor", "auditor.dlq", "mailXout", "mail.out2", "mail.outer.dlq", "x.mail.out"]
    for kind in ("configure", "read"):
        rx = re.compile(perm[kind])
        assert all(rx.match(q) for q in own), (kind, perm[kind])
        assert not any(rx.match(q) for q in foreign), (kind, perm[kind])
    write = re.compile(perm["write"])
    assert all(write.match(x) for x in [*own, "events", "audit", "amq.default"])
    assert not any(write.match(x) for x in [*foreign, "amq.topic", "eventsX"])


def test_each_user_may_publish_only_the_event_types_its_side_declares(
    topology: Topology,
) -> None:
    doc = export.definitions(topology, users=True)
    topic = {(p["user"], p["exchange"]): p for p in doc["topic_permissions"]}
    users = {u["name"] for u in doc["users"]}
    levels = [delays.level_exchange(k) for k in range(delays.LEVELS)]
    assert set(topic) == {(u, x) for u in users for x in ["events", *levels]}, (
        "every user, every topic exchange, every delay level"
    )
    may = {u: re.compile(p["write"]) for (u, x), p in topic.items() if x == "events"}
    events = list(topology.events)
    assert all(may["producer"].match(e) for e in events)
    assert not any(may["producer"].match(k) for k in ["order.refunded", "order", "order.placedX"])
    assert [e for e in events if may["fulfillment"].match(e)] == ["shipment.requested"]
    assert [e for e in events if may["email"].match(e)] == ["order.review_requested"]
    assert not any(may["analytics"].match(e) for e in events), "analytics publishes nothing"
    assert all(p["read"] == "^$" for p in doc["topic_permissions"])
    producer = {p["user"]: p for p in doc["permissions"]}["producer"]
    assert (producer["configure"], producer["read"]) == ("^$", "^$")
    write = re.compile(producer["write"])
    assert write.match("events") and not write.match("amq.default"), "never straight to a queue"


def test_delayed_events_are_held_to_the_same_event_types_as_direct_ones(
    topology: Topology,
) -> None:
    """A delay level is a topic exchange like any other: without topic permissions there, a
    subscriber could publish any event type by delaying it one second."""
    doc = export.definitions(topology, users=True)
    topic = {(p["user"], p["exchange"]): re.compile(p["write"]) for p in doc["topic_permissions"]}
    write = {p["user"]: re.compile(p["write"]) for p in doc["permissions"]}

    def may_delay(user: str, event_type: str, seconds: int) -> bool:
        exchange, key = delays.route(seconds, topology.events[event_type].exchange, event_type)
        return bool(write[user].match(exchange) and topic[(user, exchange)].match(key))

    for seconds in (1, 5, 3 * 86400, delays.MAX_DELAY):
        assert may_delay("email", "order.review_requested", seconds), seconds
        assert not may_delay("email", "order.placed", seconds), seconds
        assert all(may_delay("producer", e, seconds) for e in topology.events), seconds
        assert not any(may_delay("analytics", e, seconds) for e in topology.events), seconds
    assert not any(w.match(delays.DELIVER) for w in write.values()), (
        "the last hop would pass any event type on to its exchange"
    )


def test_definitions_json_is_stable_text(topology: Topology) -> None:
    text = export.to_json(export.definitions(topology))
    assert text.endswith("}\n")
    assert text == export.to_json(json.loads(text))


# --- AsyncAPI ---------------------------------------------------------------------------------


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        assert part in node, f"dangling $ref {ref}"
        node = node[part]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_asyncapi_has_one_channel_per_event_with_its_schema(topology: Topology) -> None:
    doc = export.asyncapi(topology)
    assert doc["asyncapi"] == "3.0.0"
    assert set(doc["channels"]) == set(topology.events)
    for etype, ev in topology.events.items():
        channel = doc["channels"][etype]
        assert channel["address"] == etype
        amqp = channel["bindings"]["amqp"]
        assert amqp["is"] == "routingKey"
        assert amqp["exchange"]["name"] == ev.exchange
        message = doc["components"]["messages"][etype]
        assert message["payload"] == (ev.json_schema or {"type": "object"})
        assert message["contentType"] == "application/json"
    for ref in _refs(doc):
        _resolve(doc, ref)


def test_asyncapi_receivers_follow_the_broker_routing(topology: Topology) -> None:
    ops = export.asyncapi(topology)["operations"]
    received = {
        (name.split(".receive.")[0], op["channel"]["$ref"].rsplit("/", 1)[1])
        for name, op in ops.items()
        if op["action"] == "receive"
    }
    assert received == {
        ("email", "order.placed"),
        ("email", "order.shipped"),
        ("email", "order.review_requested"),
        ("fulfillment", "order.placed"),
        ("fulfillment", "order.cancelled"),
        ("invoicing", "order.placed"),
        ("orders", "shipment.requested"),
        ("search", "order.placed"),
        ("search", "order.cancelled"),
        ("refunds", "refund.requested"),
        ("refunds", "payment.refunded"),
        ("refunds", "refund.expired"),
        *(("analytics", e) for e in topology.events),
    }
    sends = {name for name, op in ops.items() if op["action"] == "send"}
    assert sends == {f"send.{e}" for e in topology.events}


def test_asyncapi_routes_fanout_and_wildcards_like_rabbitmq() -> None:
    ops = export.asyncapi(small())["operations"]
    receive = {n for n, op in ops.items() if op["action"] == "receive"}
    assert receive == {
        "email.receive.order.placed",
        "email.receive.order.shipped",
        "auditor.receive.user.deleted",
    }
    assert ops["email.receive.order.placed"]["x-bus-queue"]["dlq"] == "mail.out.dlq"


# --- the command ------------------------------------------------------------------------------


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(app, ["topology", "export", *args, "--topology", str(TOPOLOGY)])


def test_export_writes_definitions_to_stdout(topology: Topology) -> None:
    result = _invoke("--format", "definitions", "--vhost", "shop")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == export.definitions(topology, vhost="shop")


def test_export_writes_asyncapi_to_a_file(tmp_path: Path, topology: Topology) -> None:
    out = tmp_path / "asyncapi.json"
    result = _invoke("--format", "asyncapi", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert json.loads(out.read_text()) == export.asyncapi(topology)


def test_export_with_users_adds_users_and_permissions() -> None:
    result = _invoke("-f", "definitions", "--users")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {u["name"] for u in doc["users"]} == {
        "email", "analytics", "fulfillment", "invoicing", "orders", "refunds", "search",
        "producer", "history",  # the events exchange keeps history: a user that may read only it
    }  # fmt: skip


def test_export_rejects_an_unknown_format() -> None:
    result = _invoke("--format", "yaml")
    assert result.exit_code == 2
