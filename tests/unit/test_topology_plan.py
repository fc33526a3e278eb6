"""bus.topology.plan: the contract table's broker objects; bus.topology.diff: the diff against
the broker."""

from __future__ import annotations

from typing import Any

import pytest

from bus.topology.diff import Action, Observed, Step, diff
from bus.topology.model import Topology, from_dict
from bus.topology.plan import (
    BindingDecl,
    Decl,
    ExchangeDecl,
    QueueDecl,
    Role,
    desired,
    is_delay_object,
)

DOC: dict[str, Any] = {
    "version": 1,
    "defaults": {"retry": {"delays": ["1m", "5m", "1h"], "delivery_limit": 10}},
    "exchanges": {"events": {"type": "topic"}},
    "events": {"order.placed": {"exchange": "events"}, "order.shipped": {"exchange": "events"}},
    "subscribers": {
        "email": {
            "handlers": "m:router",
            "bindings": [{"exchange": "events", "keys": ["order.placed", "order.shipped"]}],
        },
        "audit": {
            "handlers": "m:router",
            "queue_type": "classic",
            "retry": {"delays": ["250ms", "30s"]},
            "bindings": [{"exchange": "events", "keys": ["#"]}],
        },
    },
}


@pytest.fixture
def topology() -> Topology:
    return from_dict(DOC)


def queues(decls: list[Decl]) -> dict[str, QueueDecl]:
    """The subscribers' queues (the shared delay levels apart: test_delays.py)."""
    return {d.name: d for d in decls if isinstance(d, QueueDecl) and not is_delay_object(d)}


def own(decls: list[Decl]) -> list[Decl]:
    return [d for d in decls if not is_delay_object(d)]


def test_desired_declares_exchanges_first(topology: Topology) -> None:
    decls = own(desired(topology))
    assert decls[0] == ExchangeDecl("events", "topic")
    assert sum(isinstance(d, ExchangeDecl) for d in decls) == 1


def test_desired_yields_exactly_the_contract_objects(topology: Topology) -> None:
    names = [d.name for d in own(desired(topology)) if isinstance(d, QueueDecl)]
    assert names == [
        "email", "email.retry.1m", "email.retry.5m", "email.retry.1h", "email.dlq",
        "audit", "audit.retry.250ms", "audit.retry.30s", "audit.dlq",
    ]  # fmt: skip
    bindings = [d for d in own(desired(topology)) if isinstance(d, BindingDecl)]
    assert bindings == [
        BindingDecl("email", "events", "order.placed"),
        BindingDecl("email", "events", "order.shipped"),
        BindingDecl("audit", "events", "#"),
    ]


def test_quorum_main_queue_dead_letters_to_its_dlq_with_a_delivery_limit(
    topology: Topology,
) -> None:
    q = queues(desired(topology))["email"]
    assert (q.owner, q.role) == ("email", Role.MAIN)
    assert dict(q.arguments) == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "email.dlq",
        "x-delivery-limit": 10,
    }


def test_quorum_retry_queue_expires_back_into_its_own_queue_only(topology: Topology) -> None:
    got = queues(desired(topology))
    for delay, ms in (("1m", 60_000), ("5m", 300_000), ("1h", 3_600_000)):
        q = got[f"email.retry.{delay}"]
        assert q.role is Role.RETRY
        assert dict(q.arguments) == {
            "x-queue-type": "quorum",
            "x-message-ttl": ms,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "email",
            # at-least-once dead-lettering needs reject-publish (RabbitMQ 3.10+)
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }


def test_dlq_has_no_ttl_and_no_dead_letter_route(topology: Topology) -> None:
    got = queues(desired(topology))
    assert dict(got["email.dlq"].arguments) == {"x-queue-type": "quorum"}
    assert dict(got["audit.dlq"].arguments) == {"x-queue-type": "classic"}
    assert got["email.dlq"].role is Role.DLQ


def test_classic_main_queue_has_no_delivery_limit(topology: Topology) -> None:
    assert dict(queues(desired(topology))["audit"].arguments) == {
        "x-queue-type": "classic",
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "audit.dlq",
    }


def test_classic_retry_queue_carries_ttl_in_ms_and_routes_back(topology: Topology) -> None:
    got = queues(desired(topology))
    assert dict(got["audit.retry.250ms"].arguments) == {
        "x-queue-type": "classic",
        "x-message-ttl": 250,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "audit",
    }
    assert got["audit.retry.30s"].arguments["x-message-ttl"] == 30_000


def test_custom_queue_name_names_every_owned_queue() -> None:
    raw = {**DOC, "subscribers": {"email": {**DOC["subscribers"]["email"], "queue": "mail"}}}
    got = queues(desired(from_dict(raw)))
    assert set(got) == {"mail", "mail.retry.1m", "mail.retry.5m", "mail.retry.1h", "mail.dlq"}
    assert got["mail"].owner == "email"
    assert got["mail.retry.1m"].arguments["x-dead-letter-routing-key"] == "mail"


# -- diff -----------------------------------------------------------------------------------


def nothing() -> Observed:
    return Observed(exchanges=frozenset(), queues={}, drift={})


def everything(want: list[Decl]) -> Observed:
    return Observed(
        exchanges=frozenset(d.name for d in want if isinstance(d, ExchangeDecl)),
        queues={d.name: 0 for d in want if isinstance(d, QueueDecl)},
        drift={},
        recorded=tuple(want),
    )


def actions(steps: list[Step]) -> dict[str, Action]:
    return {s.decl.key: s.action for s in steps}


def test_diff_on_an_empty_broker_creates_everything(topology: Topology) -> None:
    want = desired(topology)
    steps = diff(want, nothing())
    assert [s.decl for s in steps] == want
    assert {s.action for s in steps} == {Action.CREATE}


def test_diff_after_apply_is_all_unchanged(topology: Topology) -> None:
    want = desired(topology)
    assert {s.action for s in diff(want, everything(want))} == {Action.UNCHANGED}


def test_binding_not_recorded_is_created_even_when_its_queue_exists(topology: Topology) -> None:
    want = desired(topology)
    seen = everything(want)
    seen = Observed(seen.exchanges, seen.queues, {}, recorded=())
    got = actions(diff(want, seen))
    assert got["binding events -> email [order.placed]"] is Action.CREATE
    assert got["queue email"] is Action.UNCHANGED


def test_drift_is_reported_with_the_brokers_complaint(topology: Topology) -> None:
    want = desired(topology)
    seen = everything(want)
    complaint = "inequivalent arg 'x-queue-type'"
    seen = Observed(seen.exchanges, seen.queues, {"queue email": complaint}, seen.recorded)
    (step,) = [s for s in diff(want, seen) if s.action is Action.DRIFT]
    assert step.decl.key == "queue email"
    assert step.detail == complaint
    assert step.line().startswith("! drift")


def old_retry_queue() -> QueueDecl:
    return QueueDecl(
        "email.retry.30s", "email", Role.RETRY, {"x-message-ttl": 30_000, "x-queue-type": "quorum"}
    )


def with_old_queue(want: list[Decl], depth: int) -> Observed:
    seen = everything(want)
    return Observed(
        seen.exchanges,
        {**seen.queues, "email.retry.30s": depth},
        {},
        (*seen.recorded, old_retry_queue()),
    )


def test_undeclared_retry_queue_is_kept_without_prune(topology: Topology) -> None:
    want = desired(topology)
    (step,) = [s for s in diff(want, with_old_queue(want, 0)) if s.action is not Action.UNCHANGED]
    assert (step.action, step.decl) == (Action.KEEP, old_retry_queue())
    assert "--prune" in step.detail


def test_undeclared_empty_retry_queue_is_deleted_with_prune(topology: Topology) -> None:
    want = desired(topology)
    steps = diff(want, with_old_queue(want, 0), prune=True)
    (step,) = [s for s in steps if s.action is not Action.UNCHANGED]
    assert (step.action, step.decl.key) == (Action.DELETE, "queue email.retry.30s")


def test_undeclared_retry_queue_holding_messages_is_refused_by_prune_unless_dropped(
    topology: Topology,
) -> None:
    want = desired(topology)
    steps = diff(want, with_old_queue(want, 3), prune=True)
    (step,) = [s for s in steps if s.action is not Action.UNCHANGED]
    assert step.action is Action.REFUSE
    assert "3 messages" in step.detail and "--drop-messages" in step.detail
    assert step.line().startswith("x refuse")
    steps = diff(want, with_old_queue(want, 3), prune=True, drop_messages=True)
    (step,) = [s for s in steps if s.action is not Action.UNCHANGED]
    assert (step.action, step.drop, step.detail) == (Action.DELETE, True, "3 messages dropped")


def test_plan_without_prune_shows_each_leftover_queues_messages(topology: Topology) -> None:
    want = desired(topology)
    (step,) = [s for s in diff(want, with_old_queue(want, 3)) if s.action is not Action.UNCHANGED]
    assert step.action is Action.KEEP and "3 messages" in step.detail


def removed_subscriber(depths: dict[str, int], consumers: dict[str, int]) -> Observed:
    """`everything`, plus the objects of a subscriber `sms` the file no longer declares."""
    gone: list[Decl] = [
        QueueDecl("sms", "sms", Role.MAIN, {}),
        QueueDecl("sms.retry.1m", "sms", Role.RETRY, {}),
        QueueDecl("sms.dlq", "sms", Role.DLQ, {}),
        BindingDecl("sms", "events", "order.placed"),
    ]
    seen = everything(desired(from_dict(DOC)))
    return Observed(
        seen.exchanges, {**seen.queues, **depths}, {}, (*seen.recorded, *gone),
        consumers, ("sms",),
    )  # fmt: skip


def test_prune_deletes_a_removed_subscribers_empty_queues_and_refuses_the_full_one(
    topology: Topology,
) -> None:
    seen = removed_subscriber({"sms": 0, "sms.retry.1m": 0, "sms.dlq": 2}, {})
    got = {s.decl.key: s for s in diff(desired(topology), seen, prune=True)}
    assert got["queue sms"].action is Action.DELETE
    assert got["queue sms.retry.1m"].action is Action.DELETE
    assert got["queue sms.dlq"].action is Action.REFUSE
    assert got["binding events -> sms [order.placed]"].action is Action.DELETE
    assert {k for k, s in got.items() if s.action is not Action.UNCHANGED} == {
        "queue sms", "queue sms.retry.1m", "queue sms.dlq", "binding events -> sms [order.placed]"
    }  # fmt: skip


def test_a_removed_subscriber_still_consumed_loses_nothing(topology: Topology) -> None:
    seen = removed_subscriber({"sms": 0, "sms.retry.1m": 0, "sms.dlq": 0}, {"sms": 1})
    steps = diff(desired(topology), seen, prune=True, drop_messages=True)
    got = {s.decl.key: s for s in steps if s.action is not Action.UNCHANGED}
    assert {s.action for s in got.values()} == {Action.REFUSE, Action.KEEP}, got
    assert "1 consumers" in got["queue sms"].detail
    assert "sms is running" in got["queue sms.dlq"].detail


def test_recorded_queue_already_gone_from_the_broker_needs_no_step(topology: Topology) -> None:
    want = desired(topology)
    seen = everything(want)
    seen = Observed(seen.exchanges, seen.queues, {}, (*seen.recorded, old_retry_queue()))
    assert {s.action for s in diff(want, seen, prune=True)} == {Action.UNCHANGED}


def test_undeclared_binding_is_kept_without_prune_and_deleted_with_it(topology: Topology) -> None:
    want = desired(topology)
    old = BindingDecl("email", "events", "order.cancelled")
    seen = everything(want)
    seen = Observed(seen.exchanges, seen.queues, {}, (*seen.recorded, old))
    assert actions(diff(want, seen))[old.key] is Action.KEEP
    assert actions(diff(want, seen, prune=True))[old.key] is Action.DELETE


def test_undeclared_exchange_is_never_pruned(topology: Topology) -> None:
    want = desired(topology)
    old = ExchangeDecl("legacy", "topic")
    seen = everything(want)
    seen = Observed(seen.exchanges | {"legacy"}, seen.queues, {}, (*seen.recorded, old))
    assert old.key not in actions(diff(want, seen, prune=True))


def test_replicas_set_the_initial_group_size_of_every_quorum_queue() -> None:
    raw = {**DOC, "defaults": {**DOC["defaults"], "replicas": 3}}
    raw["subscribers"] = {
        **DOC["subscribers"],
        "email": {**DOC["subscribers"]["email"], "replicas": 2},
    }
    got = queues(desired(from_dict(raw)))
    sizes = {n: q.arguments.get("x-quorum-initial-group-size") for n, q in got.items()}
    assert {sizes[n] for n in ("email", "email.retry.1m", "email.retry.5m", "email.dlq")} == {2}
    assert {sizes[n] for n in ("audit", "audit.retry.250ms", "audit.dlq")} == {None}, "classic"
    assert all(
        "x-quorum-initial-group-size" not in q.arguments
        for q in queues(desired(from_dict(DOC))).values()
    )
