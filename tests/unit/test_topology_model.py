"""bus.topology.model: load, defaults, and every problem reported at once with its path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from bus.errors import TopologyError
from bus.topology.model import Binding, QueueType, Topology, from_dict, load, loads

REPO = Path(__file__).resolve().parents[2]

VALID: dict[str, Any] = {
    "version": 1,
    "defaults": {"queue_type": "quorum", "prefetch": 32,
                 "retry": {"delays": ["1m", "5m", "1h"], "delivery_limit": 10}},
    "exchanges": {"events": {"type": "topic"}, "audit": {"type": "fanout"}},
    "events": {
        "order.placed": {"exchange": "events", "description": "placed",
                         "schema": {"type": "object", "required": ["order_id"]}},
        "order.shipped": {"exchange": "events"},
        "billing.run_requested": {"exchange": "events"},
        "audit.logged": {"exchange": "audit"},
    },
    "subscribers": {
        "email": {
            "handlers": "subscribers.email.handlers:router",
            "bindings": [{"exchange": "events", "keys": ["order.placed", "order.shipped"]}],
        },
        "tail": {
            "handlers": "tail.handlers:router",
            "queue": "tail-q",
            "queue_type": "classic",
            "prefetch": 5,
            "retry": {"delays": ["250ms", "60s"]},
            "bindings": [{"exchange": "events", "keys": ["order.#"]}, {"exchange": "audit"}],
        },
    },
    "schedules": {
        "nightly": {"cron": "0 2 * * *", "timezone": "Europe/Berlin",
                    "event": "billing.run_requested"},
        "warmup": {"every": "15m", "event": "order.shipped"},
    },
}  # fmt: skip


def doc(**changes: Any) -> dict[str, Any]:
    """A copy of VALID; `changes` maps `__`-separated paths to new values (None deletes)."""
    out = copy.deepcopy(VALID)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = out
        for part in parents:
            node = node[part]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return out


def problems_of(raw: Any) -> list[str]:
    with pytest.raises(TopologyError) as info:
        from_dict(raw)
    return info.value.problems


def test_valid_document_loads_with_its_exchanges_events_and_subscribers() -> None:
    t = from_dict(VALID)
    assert isinstance(t, Topology)
    assert set(t.exchanges) == {"events", "audit"}
    assert t.events["order.placed"].json_schema == {"type": "object", "required": ["order_id"]}
    assert t.subscriber_names == ["email", "tail"]


def test_subscriber_without_overrides_takes_the_defaults() -> None:
    email = from_dict(VALID).subscriber("email")
    assert email.queue == "email"
    assert email.queue_type is QueueType.QUORUM
    assert email.prefetch == 32
    assert email.delays == ("1m", "5m", "1h")
    assert email.delivery_limit == 10
    assert email.bindings == (
        Binding("events", "order.placed"),
        Binding("events", "order.shipped"),
    )


def test_subscriber_overrides_queue_retry_prefetch_and_queue_type() -> None:
    tail = from_dict(VALID).subscriber("tail")
    assert tail.queue == "tail-q"
    assert tail.queue_type is QueueType.CLASSIC
    assert tail.prefetch == 5
    assert tail.delays == ("250ms", "1m"), "delays are normalised: 60s is written 1m"
    assert tail.delivery_limit == 10, "a retry override without delivery_limit keeps the default"
    assert tail.retry_queues == ("tail-q.retry.250ms", "tail-q.retry.1m")
    assert tail.dlq == "tail-q.dlq"


def test_fanout_binding_without_keys_binds_with_hash() -> None:
    assert Binding("audit", "#") in from_dict(VALID).subscriber("tail").bindings


def test_subscriber_delivery_limit_overrides_the_default() -> None:
    t = from_dict(doc(subscribers__email__retry={"delivery_limit": 3}))
    email = t.subscriber("email")
    assert email.delivery_limit == 3
    assert email.delays == ("1m", "5m", "1h")


def test_empty_delay_list_means_no_retries() -> None:
    assert from_dict(doc(subscribers__email__retry={"delays": []})).subscriber("email").delays == ()


def test_defaults_are_used_when_the_file_has_no_defaults_section() -> None:
    email = from_dict(doc(defaults=None)).subscriber("email")
    assert (email.queue_type, email.prefetch) == (QueueType.QUORUM, 32)
    assert email.delays == ("1m", "5m", "1h")
    assert email.delivery_limit == 10


def test_defaults_retry_with_only_delivery_limit_keeps_the_default_ladder() -> None:
    t = from_dict(doc(defaults={"retry": {"delivery_limit": 5}}))
    assert t.subscriber("email").delays == ("1m", "5m", "1h")


def test_defaults_retry_with_only_delays_keeps_the_default_delivery_limit() -> None:
    t = from_dict(doc(defaults={"retry": {"delays": ["30s"]}}))
    assert t.subscriber("email").delivery_limit == 10


def test_schedules_resolve_cron_and_every() -> None:
    by_name = {s.name: s for s in from_dict(VALID).schedules()}
    assert by_name["nightly"].cron == "0 2 * * *"
    assert by_name["nightly"].timezone == "Europe/Berlin"
    assert by_name["warmup"].every_ms == 15 * 60_000


def test_unknown_subscriber_lists_the_declared_ones() -> None:
    with pytest.raises(KeyError, match="declared: email, tail"):
        from_dict(VALID).subscriber("nobody")


def test_three_mistakes_are_reported_together_with_their_paths() -> None:
    raw = doc()
    raw["subscribers"]["email"]["retry"] = {"delays": ["1m", "5 minutes"]}
    raw["subscribers"]["email"]["bindings"].append({"exchange": "nowhere", "keys": ["x"]})
    raw["subscribers"]["tail"]["bindings"][0]["keys"] = ["invoice.*"]
    problems = problems_of(raw)
    assert len(problems) == 3, problems
    assert any(
        p.startswith('subscribers.email.retry.delays[1]: "5 minutes" is not a duration')
        for p in problems
    ), problems
    assert "subscribers.email.bindings[1].exchange: exchange 'nowhere' is not declared" in problems
    assert any(p.startswith("subscribers.tail.bindings[0].keys[0]: 'invoice.*'") for p in problems)


def test_topology_error_message_lists_every_problem_on_its_own_line() -> None:
    raw = doc(subscribers__email__retry={"delays": ["0s"]}, foo=1)
    with pytest.raises(TopologyError) as info:
        from_dict(raw, source="topo.yaml")
    first, *rest = str(info.value).splitlines()
    assert first == "topo.yaml: 2 problems"
    assert sorted(line.strip().split(":")[0] for line in rest) == [
        "foo",
        "subscribers.email.retry.delays[0]",
    ]


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (doc(colour="blue"), "colour"),
        (doc(defaults__retry__attempts=3), "defaults.retry.attempts"),
        (doc(exchanges__events__durable=True), "exchanges.events.durable"),
        (doc(subscribers__email__handler="x:y"), "subscribers.email.handler"),
        (doc(schedules__warmup__jitter="1s"), "schedules.warmup.jitter"),
    ],
)
def test_unknown_keys_are_reported_with_their_path(raw: dict[str, Any], path: str) -> None:
    problems = problems_of(raw)
    assert any(p.startswith(f"{path}: unknown key") for p in problems), problems


def test_event_on_an_undeclared_exchange_is_an_error() -> None:
    raw = doc()
    raw["events"]["order.placed"]["exchange"] = "orders"
    assert "events.order.placed.exchange: exchange 'orders' is not declared" in problems_of(raw)


def test_binding_to_an_undeclared_exchange_is_an_error() -> None:
    raw = doc()
    raw["subscribers"]["email"]["bindings"][0]["exchange"] = "evnts"
    assert problems_of(raw) == [
        "subscribers.email.bindings[0].exchange: exchange 'evnts' is not declared"
    ]


def test_binding_key_matching_no_declared_event_is_an_error() -> None:
    raw = doc()
    raw["subscribers"]["email"]["bindings"][0]["keys"] = ["order.placed", "order.cancelled"]
    assert problems_of(raw) == [
        "subscribers.email.bindings[0].keys[1]: 'order.cancelled' matches no event type "
        "declared on exchange 'events'"
    ]


def test_binding_key_must_match_an_event_on_the_same_exchange() -> None:
    raw = doc()
    raw["subscribers"]["email"]["bindings"][0]["keys"] = ["audit.logged"]
    assert len(problems_of(raw)) == 1


def test_duplicate_queue_name_is_an_error() -> None:
    raw = doc(subscribers__tail__queue="email")
    problems = problems_of(raw)
    assert (
        "subscribers.tail.queue: queue 'email' is already owned by subscriber 'email'" in problems
    )


def test_queue_clashing_with_another_subscribers_retry_queue_is_an_error() -> None:
    raw = doc(subscribers__tail__queue="email.retry.1m")
    assert problems_of(raw) == [
        "subscribers.tail.queue: queue 'email.retry.1m' is already owned by subscriber 'email'"
    ]


def test_same_delay_twice_is_an_error() -> None:
    raw = doc(subscribers__email__retry={"delays": ["1m", "60s"]})
    assert "subscribers.email.retry.delays: the same delay appears twice" in problems_of(raw)


def test_same_delay_twice_is_reported_once() -> None:
    raw = doc(subscribers__email__retry={"delays": ["1m", "60s"]})
    assert problems_of(raw) == ["subscribers.email.retry.delays: the same delay appears twice"]


@pytest.mark.parametrize("cron", ["61 * * * *", "* * *", "0 2 * * * *", "every night"])
def test_bad_cron_is_an_error(cron: str) -> None:
    raw = doc(schedules__nightly__cron=cron)
    assert problems_of(raw) == [
        f'schedules.nightly.cron: "{cron}" is not a 5-field cron expression '
        "(minute hour day month weekday)"
    ]


def test_schedule_needs_exactly_one_of_cron_and_every() -> None:
    raw = doc(schedules__warmup__cron="* * * * *")
    assert problems_of(raw) == ["schedules.warmup: give exactly one of `cron:` or `every:`"]


def test_schedule_of_an_undeclared_event_and_unknown_timezone_are_errors() -> None:
    raw = doc(schedules__nightly__event="nope", schedules__nightly__timezone="Mars/Base")
    assert set(problems_of(raw)) == {
        "schedules.nightly.event: event type 'nope' is not declared",
        "schedules.nightly.timezone: unknown time zone 'Mars/Base'",
    }


def test_publishes_names_declared_event_types() -> None:
    ok = from_dict(doc(subscribers__email__publishes=["order.shipped", "order.shipped"]))
    assert ok.subscriber("email").publishes == ("order.shipped",)
    assert ok.subscriber("tail").publishes == ()
    raw = doc(subscribers__email__publishes=["order.shipped", "mail.sent"])
    assert problems_of(raw) == [
        "subscribers.email.publishes[1]: event type 'mail.sent' is not declared"
    ]


def test_handlers_must_be_module_colon_attribute() -> None:
    raw = doc(subscribers__email__handlers="subscribers.email.handlers.router")
    assert problems_of(raw) == [
        'subscribers.email.handlers: "subscribers.email.handlers.router" is not "module:attribute"'
    ]


def test_invalid_json_schema_is_an_error() -> None:
    raw = doc()
    raw["events"]["order.placed"]["schema"] = {"type": "objekt"}
    (problem,) = problems_of(raw)
    assert problem.startswith("events.order.placed.schema: not a JSON Schema")


@pytest.mark.parametrize("version", [2, "1", None])
def test_only_version_1_is_accepted(version: Any) -> None:
    problems = problems_of(doc(version=version))
    assert len(problems) == 1 and problems[0].startswith("version: "), problems


def test_version_2_is_refused_naming_the_supported_version() -> None:
    assert problems_of(doc(version=2)) == [
        "version: unsupported version 2: this bus reads version 1"
    ]


def test_document_that_is_not_a_mapping_is_refused() -> None:
    assert problems_of([1, 2]) == ["the file must be a mapping with `version: 1`"]


def test_yaml_syntax_error_carries_its_line_number() -> None:
    text = "version: 1\nexchanges:\n  events: {type: topic\nevents: {}\n"
    with pytest.raises(TopologyError) as info:
        loads(text, source="broken.yaml")
    (problem,) = info.value.problems
    assert problem.startswith("line 4, column 7: not valid YAML"), problem
    assert str(info.value) == f"broken.yaml: {problem}"  # one problem, one line


def test_loading_a_missing_file_is_a_topology_error(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="cannot read"):
        load(tmp_path / "absent.yaml")


def test_load_reads_a_file_and_names_it_as_the_source(tmp_path: Path) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(VALID), encoding="utf-8")
    assert load(path).source == str(path)


def test_the_real_topology_file_is_valid() -> None:
    t = load(REPO / "topology" / "topology.yaml")
    assert {"email", "analytics", "fulfillment"} <= set(t.subscriber_names)
    for sub in t.subscribers():
        assert sub.bindings, f"subscriber {sub.name} binds nothing"


def test_concurrency_rate_limit_and_timeout_come_from_defaults_unless_a_subscriber_overrides() -> (
    None
):
    doc = copy.deepcopy(VALID)
    doc["defaults"] |= {"concurrency": 8, "rate_limit": "600/m", "timeout": "120s"}
    doc["subscribers"]["tail"] |= {"concurrency": 2, "rate_limit": "10 / s", "timeout": "250ms"}
    t = from_dict(doc)
    email, tail = t.subscriber("email"), t.subscriber("tail")
    assert (email.concurrency, email.rate_limit, email.timeout) == (8, "600/m", "2m")
    assert (email.rate, email.timeout_ms) == (10.0, 120_000)
    assert (tail.concurrency, tail.rate_limit, tail.timeout) == (2, "10/s", "250ms")


def test_concurrency_defaults_to_the_prefetch_and_limits_to_none() -> None:
    tail = from_dict(VALID).subscriber("tail")
    assert (tail.concurrency, tail.rate_limit, tail.timeout) == (5, None, None)


def test_bad_concurrency_rate_limit_and_timeout_are_reported_at_once_with_their_paths() -> None:
    doc = copy.deepcopy(VALID)
    doc["defaults"]["rate_limit"] = "fast"
    doc["subscribers"]["email"] |= {"concurrency": 0, "rate_limit": "10/week",
                                    "timeout": "2 minutes"}  # fmt: skip
    with pytest.raises(TopologyError) as err:
        from_dict(doc)
    assert err.value.problems == [
        'defaults.rate_limit: "fast" is not a rate (use e.g. 10/s, 600/m, 100/h)',
        "subscribers.email.concurrency: Input should be greater than or equal to 1",
        'subscribers.email.rate_limit: "10/week" is not a rate (use e.g. 10/s, 600/m, 100/h)',
        'subscribers.email.timeout: "2 minutes" is not a duration (use e.g. 250ms, 30s, 5m, 1h, 1d)',
    ]


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (doc(subscribers__email__prefecth=10),
         "subscribers.email.prefecth: unknown key (did you mean 'prefetch'?)"),
        (doc(defaults__retry__delay=["1s"]),
         "defaults.retry.delay: unknown key (did you mean 'delays'?)"),
        (doc(evnets={}), "evnets: unknown key (did you mean 'events'?)"),
        (doc(events__x={"exchange": "events", "schemaa": {}}),
         "events.x.schemaa: unknown key (did you mean 'schema'?)"),
        (doc(colour="blue"), "colour: unknown key"),
    ],
)  # fmt: skip
def test_an_unknown_key_suggests_the_nearest_known_one(raw: dict[str, Any], problem: str) -> None:
    assert problem in problems_of(raw)
