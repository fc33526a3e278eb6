"""What the plan declares differs by RabbitMQ release: a quorum DLQ has no delivery limit on
4.x (`x-delivery-limit: -1`), and no argument at all on 3.x, where `-1` would drop a message at
its first return. An existing 4.x DLQ under the default limit is re-declared, its messages kept."""

from __future__ import annotations

import pytest

from bus.topology.diff import Action, Observed, diff
from bus.topology.model import from_dict
from bus.topology.plan import QueueDecl, Role, desired
from bus.topology.release import OLDEST, Release
from tests.unit.test_topology_plan import DOC, queues

FOUR = Release(4, 0)


@pytest.mark.parametrize(
    ("version", "expected"),
    [("4.0.5", Release(4, 0)), ("3.10.8", Release(3, 10)), (b"4.3.0", Release(4, 3)),
     ("", OLDEST), (None, OLDEST), ("rabbit", OLDEST)],
)  # fmt: skip
def test_a_release_is_read_from_the_broker_version(version: str | None, expected: Release) -> None:
    assert Release.parse(version) == expected


def test_a_quorum_dlq_declares_no_delivery_limit_on_4_and_no_argument_on_3() -> None:
    t = from_dict(DOC)
    assert queues(desired(t, FOUR))["email.dlq"].arguments["x-delivery-limit"] == -1
    assert "x-delivery-limit" not in queues(desired(t, OLDEST))["email.dlq"].arguments
    assert "x-delivery-limit" not in queues(desired(t))["email.dlq"].arguments, "3.x by default"


def test_classic_dlqs_and_other_queues_are_the_same_on_every_release() -> None:
    t = from_dict(DOC)
    three, four = queues(desired(t, OLDEST)), queues(desired(t, FOUR))
    assert three["audit.dlq"].arguments == four["audit.dlq"].arguments  # classic: no limits
    for name in three:
        if not name.endswith(".dlq"):
            assert three[name].arguments == four[name].arguments, name
    assert four["email"].arguments["x-delivery-limit"] == 10  # the crash-loop guard stays


def test_a_4_dlq_under_the_default_limit_is_planned_as_a_migration_keeping_its_messages() -> None:
    want = desired(from_dict(DOC), FOUR)
    dlq = queues(want)["email.dlq"]
    complaint = (
        "inequivalent arg 'x-delivery-limit' for queue 'email.dlq' in vhost '/': "
        "received the value '-1' of type 'byte' but current is none"
    )
    seen = Observed(frozenset({"events"}), {"email.dlq": 7}, {dlq.key: complaint})
    [step] = [s for s in diff(want, seen) if s.decl == dlq]
    assert step.action is Action.MIGRATE
    assert "7 messages" in step.detail and "x-delivery-limit=-1" in step.detail
    assert step.line().startswith("~ migrate")


def test_other_drift_of_a_dlq_and_any_drift_of_other_queues_stay_drift() -> None:
    want = desired(from_dict(DOC), FOUR)
    q = queues(want)
    other = "inequivalent arg 'x-queue-type' for queue 'email.dlq'"
    limit = "inequivalent arg 'x-delivery-limit' for queue 'email'"
    seen = Observed(frozenset(), {"email.dlq": 0, "email": 0},
                    {q["email.dlq"].key: other, q["email"].key: limit})  # fmt: skip
    actions = {s.decl.name: s.action for s in diff(want, seen) if isinstance(s.decl, QueueDecl)
               and s.decl.role in (Role.DLQ, Role.MAIN) and s.decl.owner == "email"}  # fmt: skip
    assert actions == {"email": Action.DRIFT, "email.dlq": Action.DRIFT}


def test_definitions_for_4_give_the_dlq_no_limit_and_for_3_no_argument() -> None:
    from bus.topology.export import definitions

    t = from_dict(DOC)

    def dlq_args(doc: dict[str, object]) -> dict[str, object]:
        [q] = [q for q in doc["queues"] if q["name"] == "email.dlq"]  # type: ignore[attr-defined]
        return q["arguments"]  # type: ignore[no-any-return]

    assert dlq_args(definitions(t, release=FOUR))["x-delivery-limit"] == -1
    assert "x-delivery-limit" not in dlq_args(definitions(t))
