"""The pure decisions of event history: topology keys, the log's broker objects, which events
a read or a replay selects, and the idempotency key of a `--again` copy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bus.durations import parse_bytes
from bus.envelope import H_AGAIN, idempotency_key
from bus.errors import TopologyError
from bus.history.event import MARKER, decode
from bus.history.select import MARGIN, Selection, parse_when, routes
from bus.topology.diff import Action, Observed, diff
from bus.topology.model import ExchangeType, from_dict
from bus.topology.plan import BindingDecl, QueueDecl, Role, desired, retired_history, stream_max_age

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def doc(history: Any = None, kind: str = "topic", **sub: Any) -> dict[str, Any]:
    exchange: dict[str, Any] = {"type": kind}
    if history is not None:
        exchange["history"] = history
    return {
        "version": 1,
        "exchanges": {"events": exchange},
        "events": {"order.placed": {"exchange": "events"}, "order.shipped": {"exchange": "events"}},
        "subscribers": {
            "search": {
                "handlers": "m:router",
                "bindings": [{"exchange": "events", "keys": ["order.placed"]}],
                **sub,
            }
        },
    }


def test_history_without_limits_keeps_seven_days() -> None:
    h = from_dict(doc({})).history("events")
    assert h is not None and (h.stream, h.max_age, h.max_bytes) == ("events.history", "7d", None)


def test_history_with_only_a_size_has_no_age_limit() -> None:
    h = from_dict(doc({"max_bytes": "10GB"})).history("events")
    assert h is not None and (h.max_age, h.max_bytes) == (None, 10_000_000_000)


def test_the_log_is_a_stream_with_the_limits_bound_with_hash_on_a_topic_exchange() -> None:
    decls = desired(from_dict(doc({"max_age": "2d", "max_bytes": "1GiB"})))
    [stream] = [d for d in decls if isinstance(d, QueueDecl) and d.role is Role.HISTORY]
    assert dict(stream.arguments) == {
        "x-queue-type": "stream", "x-max-age": "2D", "x-max-length-bytes": 2**30,
    }  # fmt: skip
    assert BindingDecl("events.history", "events", "#") in decls


def test_a_direct_exchange_log_is_bound_once_per_event_type() -> None:
    decls = desired(from_dict(doc({}, kind="direct")))
    keys = {d.routing_key for d in decls if isinstance(d, BindingDecl) and d.queue.endswith("y")}
    assert keys == {"order.placed", "order.shipped"}


def test_no_history_no_stream() -> None:
    assert not [d for d in desired(from_dict(doc())) if d.key.startswith("queue events.history")]


@pytest.mark.parametrize(
    ("history", "says"),
    [
        ({"max_age": "a week"}, "exchanges.events.history.max_age"),
        ({"max_bytes": "lots"}, "is not a size"),
        ({"max_age": "1d", "forever": True}, "unknown key"),
    ],
)
def test_bad_history_keys_are_reported_with_their_path(history: Any, says: str) -> None:
    with pytest.raises(TopologyError, match=says):
        from_dict(doc(history))


def test_backfill_needs_history_and_no_more_than_it_keeps() -> None:
    with pytest.raises(TopologyError, match="keeps no history"):
        from_dict(doc(None, backfill="1d"))
    with pytest.raises(TopologyError, match=r"30d is longer than the history kept .* \(7d\)"):
        from_dict(doc({}, backfill="30d"))
    assert from_dict(doc({"max_age": "30d"}, backfill="30d")).subscriber("search").backfill == "30d"


def test_prune_removes_a_log_no_longer_asked_for_and_keeps_it_otherwise() -> None:
    want = desired(from_dict(doc()))
    [old] = retired_history(want)
    seen = Observed(frozenset({"events"}), {"events.history": 0}, {}, (old,))
    assert [s.action for s in diff(want, seen) if s.decl == old] == [Action.KEEP]
    assert [s.action for s in diff(want, seen, prune=True) if s.decl == old] == [Action.DELETE]
    kept = desired(from_dict(doc({})))
    assert retired_history(kept) == []


def test_stream_ages_use_the_brokers_units() -> None:
    assert [stream_max_age(d) for d in ("7d", "36h", "90m", "250ms")] == ["7D", "36h", "90m", "1s"]


def test_sizes() -> None:
    assert [parse_bytes(s) for s in ("500MB", "1GiB", "123", 7)] == [5 * 10**8, 2**30, 123, 7]
    with pytest.raises(ValueError, match="not a size"):
        parse_bytes("0GB")


def test_since_is_a_duration_ago_or_an_rfc3339_time() -> None:
    assert parse_when("1h", NOW) == NOW - timedelta(hours=1)
    assert parse_when("2026-04-30T10:00:00Z", NOW) == datetime(2026, 4, 30, 10, tzinfo=UTC)
    assert parse_when("2026-04-30", NOW) == datetime(2026, 4, 30, tzinfo=UTC)
    with pytest.raises(ValueError, match="neither a duration"):
        parse_when("yesterday", NOW)


def test_a_read_starts_a_little_early_and_filters_on_the_events_own_time() -> None:
    s = Selection(since=NOW, until=NOW + timedelta(hours=1))
    assert s.start() == NOW - MARGIN
    assert not s.takes("order.placed", NOW - timedelta(seconds=1), "a", None)
    assert s.takes("order.placed", NOW, "a", None)
    assert not s.takes("order.placed", NOW + timedelta(hours=2), "a", None)


def test_filters_on_type_pattern_id_and_correlation() -> None:
    s = Selection(types=("order.*",), correlation_id="c")
    assert s.takes("order.placed", None, "a", "c")
    assert not s.takes("order.placed", None, "a", "d")
    assert not s.takes("payment.done", None, "a", "c")
    assert not Selection(id="x").takes("order.placed", None, "a", None)


def test_replay_routes_by_rabbitmqs_rule_for_the_exchange_type() -> None:
    assert routes(ExchangeType.TOPIC, ["order.#"], "order.placed.eu")
    assert not routes(ExchangeType.TOPIC, ["order.*"], "order.placed.eu")
    assert routes(ExchangeType.DIRECT, ["order.placed"], "order.placed")
    assert not routes(ExchangeType.DIRECT, ["order.*"], "order.placed")
    assert routes(ExchangeType.FANOUT, [""], "anything")


def test_a_marker_is_no_event_and_an_entry_keeps_its_envelope() -> None:
    assert decode(body=b"", message_id="m", type_=None, app_id=None, timestamp=None,
                  correlation_id=None, headers={MARKER: "m"}) is None  # fmt: skip
    e = decode(
        body=b'{"a":1}', message_id="id-1", type_="order.placed", app_id="api", timestamp=NOW,
        correlation_id="c", headers={"cloudEvents_time": "2026-05-01T11:00:00Z",
                                     "x-stream-offset": 42},
    )  # fmt: skip
    assert e is not None and (e.id, e.type, e.source, e.correlation_id, e.offset) == (
        "id-1", "order.placed", "api", "c", 42,
    )  # fmt: skip
    assert e.time == NOW - timedelta(hours=1) and "x-stream-offset" not in e.headers
    assert e.as_json()["time"] == "2026-05-01T11:00:00Z"


def test_an_again_copy_is_recorded_under_its_runs_key() -> None:
    assert idempotency_key("e-1", {}) == "e-1"
    assert idempotency_key("e-1", {H_AGAIN: "run-7"}) == "e-1#again:run-7"
    assert idempotency_key("e-1", {H_AGAIN: b"run-7"}) == "e-1#again:run-7"


def test_exports_include_the_log() -> None:
    from bus.topology.export import asyncapi, definitions

    t = from_dict(doc({"max_age": "1d"}))
    d = definitions(t)
    [q] = [q for q in d["queues"] if q["name"] == "events.history"]
    assert q["arguments"] == {"x-max-age": "1D", "x-queue-type": "stream"}
    [b] = [b for b in d["bindings"] if b["destination"] == "events.history"]
    assert (b["source"], b["routing_key"]) == ("events", "#")
    api = asyncapi(t)
    assert api["channels"]["order.placed"]["x-bus-history"]["stream"] == "events.history"


def test_the_history_user_reads_only_the_logs_and_writes_only_through_the_default_exchange() -> (
    None
):
    import re

    from bus.topology.export import HISTORY_USER, definitions

    assert HISTORY_USER not in [
        u["name"] for u in definitions(from_dict(doc()), users=True)["users"]
    ]
    d = definitions(from_dict(doc({"max_age": "1d"})), users=True)
    assert HISTORY_USER in [u["name"] for u in d["users"]]
    [p] = [p for p in d["permissions"] if p["user"] == HISTORY_USER]
    read, write = re.compile(p["read"]), re.compile(p["write"])
    assert read.match("events.history")
    assert not any(read.match(q) for q in ["search", "search.dlq", "events.historyX", "events"])
    assert write.match("amq.default")
    assert not any(write.match(x) for x in ["events", "events.history", "bus.delay.0"])
    assert p["configure"] == "^$"
    topics = [t for t in d["topic_permissions"] if t["user"] == HISTORY_USER]
    assert topics and all(t["write"] == "^$" for t in topics)
