"""bus.ordering's pure core: the key of an event, its partition, and the gate that runs one
event per key at a time, in order, with a durable hold while one of them retries."""

from __future__ import annotations

from typing import Any

import pytest

from bus.envelope import H_KEY, Event, encode, key_at
from bus.errors import InvalidEvent, TopologyError
from bus.ordering.gate import Ended, Gate, Verdict
from bus.ordering.partitions import key_of
from bus.produce.validation import EventChecker
from bus.topology.diff import Action, Observed, diff
from bus.topology.model import from_dict
from bus.topology.ordering import partition_header, partition_of
from bus.topology.plan import (
    BindingDecl,
    ExchangeBindingDecl,
    ExchangeDecl,
    QueueDecl,
    Role,
    subscriber_objects,
)


def _topology(**sub: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "exchanges": {"events": {"type": "topic"}},
        "events": {
            "order.placed": {"exchange": "events", "key": "order_id"},
            "order.cancelled": {"exchange": "events", "key": "order.id"},
            "mail.sent": {"exchange": "events"},
        },
        "subscribers": {
            "fulfillment": {
                "handlers": "x.handlers:router",
                "bindings": [{"exchange": "events", "keys": ["order.*"]}],
                **sub,
            }
        },
    }


# -- the key -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "path", "key"),
    [
        ({"order_id": "o-1"}, "order_id", "o-1"),
        ({"order": {"id": 42}}, "order.id", "42"),
        ({"order": {"id": True}}, "order.id", "true"),
        ({"order_id": None}, "order_id", None),
        ({"order_id": {"a": 1}}, "order_id", None),
        ({"order": "o-1"}, "order.id", None),
        ({}, "order_id", None),
        ("text", "order_id", None),
    ],
)
def test_key_is_the_value_at_the_dotted_path_as_text(data: Any, path: str, key: str | None) -> None:
    assert key_at(data, path) == key


def test_a_keyed_event_carries_its_key_in_the_bus_key_header() -> None:
    wire = encode(Event("order.placed", {"order_id": "o-1"}), key="o-1")
    assert wire.headers[H_KEY] == "o-1"
    assert H_KEY not in encode(Event("mail.sent", {})).headers


def test_a_keyed_type_without_its_key_field_is_refused_before_sending() -> None:
    checker = EventChecker(from_dict(_topology(ordered=True)))
    assert checker.key("order.cancelled", {"order": {"id": "o-9"}}) == "o-9"
    assert checker.key("mail.sent", {}) is None
    with pytest.raises(InvalidEvent, match=r"ordered by `order_id`"):
        checker.check("order.placed", {"id": "o-1"})


def test_publisher_and_testbus_set_the_header_through_one_place() -> None:
    from bus.produce.publisher import Publisher

    pub = Publisher("memory://", from_dict(_topology()), source="t")
    assert pub.key("order.placed", {"order_id": 7}) == "7"


# -- the partition -----------------------------------------------------------------------------


def test_partition_of_a_key_is_stable_and_spreads_keys() -> None:
    # crc32 of the UTF-8: no per-process salt, so every replica and producer agrees
    assert (partition_of("o-1", 4), partition_of("o-1", 8)) == (2, 2)
    counts = [0] * 4
    for i in range(1000):
        counts[partition_of(f"order-{i}", 4)] += 1
    assert min(counts) > 200, counts


def test_a_delivery_without_bus_key_is_ordered_by_its_own_id() -> None:
    assert key_of({H_KEY: "o-1"}, "e-1") == "o-1"
    assert key_of({H_KEY: b"o-1"}, "e-1") == "o-1"
    assert key_of({}, "e-1") == "id:e-1"


# -- the topology ------------------------------------------------------------------------------


def test_ordered_subscriber_owns_partition_and_hold_queues_with_single_active_consumer() -> None:
    sub = from_dict(_topology(ordered=True, partitions=3)).subscriber("fulfillment")
    assert sub.partition_queues == ("fulfillment.p0", "fulfillment.p1", "fulfillment.p2")
    queues = {d.name: d for d in subscriber_objects(sub) if hasattr(d, "role")}
    assert queues["fulfillment"].arguments["x-single-active-consumer"] is True
    p1 = queues["fulfillment.p1"]
    assert p1.role is Role.PARTITION and p1.arguments["x-single-active-consumer"] is True
    assert p1.arguments["x-dead-letter-routing-key"] == "fulfillment.dlq"
    hold = queues["fulfillment.p1.hold"]
    assert hold.role is Role.HOLD
    assert hold.arguments["x-dead-letter-routing-key"] == "fulfillment.p1"
    assert hold.arguments["x-message-ttl"] == 1000


def test_partitions_default_to_four_and_unordered_subscribers_have_none() -> None:
    assert from_dict(_topology(ordered=True)).subscriber("fulfillment").partitions == 4
    plain = from_dict(_topology()).subscriber("fulfillment")
    assert plain.partitions == 0 and plain.partition_queues == ()
    names = [getattr(d, "name", "") for d in subscriber_objects(plain)]
    assert not any(".p" in n for n in names)


def test_bad_ordering_topology_is_one_line_per_problem() -> None:
    raw = _topology(ordered=True, partitions=0)
    raw["subscribers"]["fulfillment"]["bindings"] = [{"exchange": "events", "keys": ["#"]}]
    raw["subscribers"]["other"] = {"handlers": "x.h:router", "partitions": 2}
    with pytest.raises(TopologyError) as err:
        from_dict(raw)
    text = str(err.value)
    assert "subscribers.fulfillment.partitions: Input should be greater than or equal to 1" in text
    assert (
        "subscribers.fulfillment.ordered: it receives 'mail.sent', which declares no `key`" in text
    )
    assert "subscribers.other.partitions: only an ordered subscriber has partitions" in text


def test_the_exchange_partitioner_routes_by_the_partition_header_and_falls_back_to_the_queue() -> (
    None
):
    sub = from_dict(_topology(ordered=True, partitions=3, partitioner="exchange")).subscriber(
        "fulfillment"
    )
    decls = subscriber_objects(sub)
    exchanges = {d.name: d for d in decls if isinstance(d, ExchangeDecl)}
    partitions, unrouted = exchanges["fulfillment.partitions"], exchanges["fulfillment.unrouted"]
    assert (partitions.type, partitions.owner) == ("headers", "fulfillment")
    assert partitions.arguments == {"alternate-exchange": "fulfillment.unrouted"}
    assert (unrouted.type, unrouted.owner) == ("fanout", "fulfillment")
    bindings = [(b.queue, b.exchange, dict(b.arguments)) for b in decls
                if isinstance(b, BindingDecl)]  # fmt: skip
    # each partition matches its index under the header of its count; only Q.unrouted feeds Q
    assert bindings == [
        ("fulfillment", "fulfillment.unrouted", {}),
        *((f"fulfillment.p{i}", "fulfillment.partitions",
           {"x-match": "all", "bus-partition-3": str(i)}) for i in range(3)),
    ]  # fmt: skip
    assert [d for d in decls if isinstance(d, ExchangeBindingDecl)] == [
        ExchangeBindingDecl("fulfillment.partitions", "events", "order.*")
    ]
    by_bus = from_dict(_topology(ordered=True)).subscriber("fulfillment")
    assert by_bus.partitioner == "bus" and by_bus.partition_exchange is None
    assert not any(isinstance(d, ExchangeDecl) for d in subscriber_objects(by_bus))


def test_producers_stamp_the_partition_of_each_count_the_broker_routes_by() -> None:
    raw = _topology(ordered=True, partitions=3, partitioner="exchange")
    raw["subscribers"]["ledger"] = {
        "handlers": "x.h:router", "bindings": [{"exchange": "events", "keys": ["order.placed"]}],
        "ordered": True, "partitions": 8, "partitioner": "exchange",
    }  # fmt: skip
    raw["subscribers"]["audit"] = {  # moved by the bus: nothing to stamp for it
        "handlers": "x.h:router", "bindings": [{"exchange": "events", "keys": ["order.*"]}],
        "ordered": True, "partitions": 5,
    }  # fmt: skip
    topology = from_dict(raw)
    assert topology.partition_counts("order.placed") == (3, 8)
    assert topology.partition_counts("order.cancelled") == (3,)
    assert topology.partition_counts("mail.sent") == ()
    assert partition_header(8) == "bus-partition-8"


def test_a_partitioner_without_ordered_is_one_line() -> None:
    raw = _topology(partitioner="exchange")
    with pytest.raises(
        TopologyError, match=r"subscribers\.fulfillment\.partitioner: only an ordered"
    ):
        from_dict(raw)


def _seen(recorded: list[Any], *, queues: list[str], exchanges: list[str]) -> Observed:
    return Observed(frozenset(exchanges), dict.fromkeys(queues, 0), {}, tuple(recorded))


def test_switching_to_the_exchange_removes_the_queues_bindings_at_once() -> None:
    by_bus = subscriber_objects(from_dict(_topology(ordered=True)).subscriber("fulfillment"))
    by_exchange = subscriber_objects(
        from_dict(_topology(ordered=True, partitioner="exchange")).subscriber("fulfillment")
    )
    queues = [d.name for d in by_bus if isinstance(d, QueueDecl)]
    steps = diff(by_exchange, _seen(by_bus, queues=queues, exchanges=["events"]))
    got = {(s.action, s.decl.key) for s in steps}
    assert (Action.CREATE, "exchange fulfillment.partitions") in got
    assert (Action.DELETE, "binding events -> fulfillment [order.*]") in got, "without --prune"
    # and back: the exchanges go (their bindings with them), the queue is bound again
    owned = ["events", "fulfillment.partitions", "fulfillment.unrouted"]
    back = {(s.action, s.decl.key) for s in diff(by_bus, _seen(by_exchange, queues=queues,
                                                                exchanges=owned))}  # fmt: skip
    assert (Action.DELETE, "exchange fulfillment.partitions") in back
    assert (Action.DELETE, "exchange fulfillment.unrouted") in back
    assert (Action.CREATE, "binding events -> fulfillment [order.*]") in back
    assert not any(a is Action.DELETE and "binding" in k for a, k in back), back


def test_another_partition_count_behind_the_exchange_unbinds_the_old_matches() -> None:
    def objects(n: int) -> list[Any]:
        topo = from_dict(_topology(ordered=True, partitions=n, partitioner="exchange"))
        return subscriber_objects(topo.subscriber("fulfillment"))

    four, two = objects(4), objects(2)
    queues = [d.name for d in four if isinstance(d, QueueDecl)]
    owned = ["events", "fulfillment.partitions", "fulfillment.unrouted"]
    got = {(s.action, s.decl.key) for s in diff(two, _seen(four, queues=queues, exchanges=owned))}
    for i in range(4):  # else events stamped for 4 partitions would still reach them
        old = f"binding fulfillment.partitions -> fulfillment.p{i} [] bus-partition-4={i}, x-match=all"
        assert (Action.DELETE, old) in got, got
    for i in range(2):
        new = f"binding fulfillment.partitions -> fulfillment.p{i} [] bus-partition-2={i}, x-match=all"
        assert (Action.CREATE, new) in got
    assert (Action.KEEP, "queue fulfillment.p3") in got


def test_a_removed_subscribers_exchanges_go_only_with_prune() -> None:
    objects = subscriber_objects(
        from_dict(_topology(ordered=True, partitioner="exchange")).subscriber("fulfillment")
    )
    queues = [d.name for d in objects if isinstance(d, QueueDecl)]
    owned = ["events", "fulfillment.partitions", "fulfillment.unrouted"]
    seen = _seen(objects, queues=queues, exchanges=owned)
    kept = {(s.action, s.decl.key) for s in diff([], seen)}
    assert (Action.KEEP, "exchange fulfillment.partitions") in kept
    pruned = {(s.action, s.decl.key) for s in diff([], seen, prune=True)}
    assert (Action.DELETE, "exchange fulfillment.partitions") in pruned
    assert (Action.DELETE, "exchange fulfillment.unrouted") in pruned
    assert not any("fulfillment.partitions" in k and "binding" in k for _, k in pruned), pruned


# -- the gate ----------------------------------------------------------------------------------


def _admit(gate: Gate[str], event: str) -> Verdict:
    """*event* like "a3": key "a", sequence number 3, the item its own id."""
    return gate.admit(event[0], event, int(event[1:]), event)


def test_one_event_per_key_at_a_time_in_order_and_keys_in_parallel() -> None:
    gate: Gate[str] = Gate("t")
    assert _admit(gate, "a1") is Verdict.RUN
    assert _admit(gate, "b1") is Verdict.RUN  # another key: parallel
    assert _admit(gate, "a2") is Verdict.WAIT
    assert _admit(gate, "a3") is Verdict.WAIT
    assert gate.done("a", "a1", Ended.DONE, 0) == ("a2", [])
    assert gate.done("a", "a2", Ended.DONE, 0) == ("a3", [])
    assert gate.done("a", "a3", Ended.DONE, 0) == (None, [])
    assert _admit(gate, "a4") is Verdict.RUN
    assert gate.idle()


def test_a_retry_holds_only_its_key_and_sends_its_waiting_events_aside() -> None:
    gate: Gate[str] = Gate("t")
    _admit(gate, "a1")
    _admit(gate, "a2")
    assert gate.done("a", "a1", Ended.RETRY, 100.0) == (None, ["a2"])
    [hold] = gate.holds()
    assert (hold.key, hold.held_by, hold.since, hold.aside) == ("a", "a1", 100.0, 1)
    assert _admit(gate, "a3") is Verdict.ASIDE  # fresh: aside too
    assert _admit(gate, "b1") is Verdict.RUN  # other keys flow
    assert _admit(gate, "a2") is Verdict.ASIDE  # back from a lap: again
    assert not gate.idle()
    # the event holding the key comes back from its retry queue and succeeds
    assert _admit(gate, "a1") is Verdict.RUN
    assert gate.done("a", "a1", Ended.DONE, 0) == (None, [])
    assert gate.holds() == []
    # a fresh event must not pass the ones still out on a lap
    assert _admit(gate, "a4") is Verdict.ASIDE
    assert _admit(gate, "a2") is Verdict.RUN
    assert _admit(gate, "a3") is Verdict.WAIT
    assert gate.done("a", "a2", Ended.DONE, 0) == ("a3", [])
    assert _admit(gate, "a4") is Verdict.WAIT
    assert gate.done("a", "a3", Ended.DONE, 0) == ("a4", [])
    assert gate.done("a", "a4", Ended.DONE, 0) == (None, [])
    assert gate.idle()
    assert _admit(gate, "a5") is Verdict.RUN


def test_a_lap_copy_that_went_back_unsent_is_no_longer_out() -> None:
    gate: Gate[str] = Gate("t")
    _admit(gate, "a1")
    gate.done("a", "a1", Ended.RETRY, 0)
    assert _admit(gate, "a2") is Verdict.ASIDE  # its key is held
    gate.returned("a", 2)  # the lap could not be sent: a2 went back to its partition
    assert _admit(gate, "a1") is Verdict.RUN  # the held event is back and succeeds
    assert gate.done("a", "a1", Ended.DONE, 0) == (None, [])
    # a2 comes again with another number (numbered in memory only, as the exchange's events
    # are): nothing of its key is out, so it runs, instead of lapping behind a copy never sent
    assert _admit(gate, "a5") is Verdict.RUN
    assert gate.done("a", "a5", Ended.DONE, 0) == (None, [])
    assert gate.idle()


def test_laps_that_come_back_out_of_order_run_in_sequence_order() -> None:
    """The hold queue rotates a key's laps: a2 comes back and is sent round again behind a3,
    still in the hold queue. After the release a3 comes back first: it must lap once more."""
    gate: Gate[str] = Gate("t")
    _admit(gate, "a1")
    _admit(gate, "a2")
    _admit(gate, "a3")
    assert gate.done("a", "a1", Ended.RETRY, 0) == (None, ["a2", "a3"])
    assert _admit(gate, "a2") is Verdict.ASIDE  # lap: now behind a3 in the hold queue
    assert _admit(gate, "a1") is Verdict.RUN
    assert gate.done("a", "a1", Ended.DONE, 0) == (None, [])
    assert _admit(gate, "a3") is Verdict.ASIDE  # a2 is still out: a3 must not pass it
    assert _admit(gate, "a2") is Verdict.RUN
    assert gate.done("a", "a2", Ended.DONE, 0) == (None, [])
    assert _admit(gate, "a3") is Verdict.RUN


def test_waiting_events_step_aside_when_an_earlier_one_of_their_key_is_out() -> None:
    gate: Gate[str] = Gate("t")
    _admit(gate, "a1")
    gate.done("a", "a1", Ended.RETRY, 0)
    assert _admit(gate, "a2") is Verdict.ASIDE
    assert _admit(gate, "a1") is Verdict.RUN
    assert _admit(gate, "a3") is Verdict.ASIDE  # a2 out
    gate.done("a", "a1", Ended.DONE, 0)
    assert _admit(gate, "a2") is Verdict.RUN
    assert _admit(gate, "a3") is Verdict.WAIT
    assert gate.done("a", "a2", Ended.DONE, 0) == ("a3", [])


def test_a_parked_event_releases_its_key() -> None:
    gate: Gate[str] = Gate("t")
    _admit(gate, "a1")
    gate.done("a", "a1", Ended.RETRY, 0)
    assert _admit(gate, "a1") is Verdict.RUN  # last attempt
    assert gate.done("a", "a1", Ended.DONE, 0) == (None, [])  # parked: DONE for the key
    assert _admit(gate, "a2") is Verdict.RUN


def test_a_gate_ignores_the_end_of_an_event_it_does_not_know() -> None:
    gate: Gate[str] = Gate("t")
    assert gate.done("a", "a1", Ended.RETRY, 0) == (None, [])
    assert _admit(gate, "a2") is Verdict.RUN


def test_keys_held_by_the_previous_owner_stay_held_until_their_event_comes_back() -> None:
    gate: Gate[str] = Gate("new", held=[("a", "a1", 50.0)])
    [hold] = gate.holds()
    assert (hold.key, hold.held_by, hold.since) == ("a", "a1", 50.0)
    assert _admit(gate, "a2") is Verdict.ASIDE  # the old owner's lap
    assert _admit(gate, "a3") is Verdict.ASIDE
    assert _admit(gate, "a1") is Verdict.RUN
    assert gate.done("a", "a1", Ended.DONE, 0) == (None, [])
    assert _admit(gate, "a3") is Verdict.ASIDE  # back first: a2 is still out
    assert _admit(gate, "a2") is Verdict.RUN


def test_after_a_takeover_every_event_takes_a_lap_until_the_sentinel_is_back() -> None:
    """The old owner's laps (b1, c1) come back after fresh events of their keys (b2, c2):
    while calm every event laps, so all are this gate's own laps when it settles."""
    gate: Gate[str] = Gate("new", held=[("a", "a1", 5.0)], calm=True)
    assert _admit(gate, "b2") is Verdict.ASIDE  # fresh, ahead of the old owner's b1
    assert _admit(gate, "b1") is Verdict.ASIDE  # the old owner's lap: adopted
    assert _admit(gate, "c2") is Verdict.ASIDE
    assert _admit(gate, "c1") is Verdict.ASIDE  # the old owner's lap: adopted
    assert _admit(gate, "a1") is Verdict.RUN  # a held key's own retry runs: it is the first
    gate.settle()  # the sentinel is back: every lap out is this gate's own
    assert _admit(gate, "c1") is Verdict.RUN
    assert _admit(gate, "b2") is Verdict.ASIDE  # b1 is still out
    assert _admit(gate, "c2") is Verdict.WAIT
    assert _admit(gate, "b1") is Verdict.RUN
    assert _admit(gate, "d1") is Verdict.RUN  # settled: no lap


# -- spreading the partitions ------------------------------------------------------------------


def test_a_replica_over_its_fair_share_hands_on_the_partition_with_the_fewest_held_keys() -> None:
    from bus.ordering.balance import fair_share, to_hand_on

    assert fair_share(4, 2) == 2 and fair_share(4, 3) == 2 and fair_share(4, 0) == 4
    four = ["q.p0", "q.p1", "q.p2", "q.p3"]
    assert to_hand_on(four, 4, 1, {}) is None  # alone: every partition is its share
    assert to_hand_on(four, 4, 2, {}) == "q.p3"
    assert to_hand_on(four, 4, 2, {"q.p3": 2, "q.p2": 1}) == "q.p1"
    assert to_hand_on(four[:2], 4, 2, {}) is None
