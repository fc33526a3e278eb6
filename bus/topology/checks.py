"""The cross-references of a topology document, checked on the raw mapping so that a typo in
one place does not hide a dangling reference in another: one line per problem."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
from croniter import croniter

from bus.durations import normalise
from bus.topology.history import check_backfill as _check_backfill
from bus.topology.ordering import check_ordered, partition_queues
from bus.topology.routing import matches

DEFAULT_DELAYS = ["1m", "5m", "1h"]
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")  # exchanges, events, queues


def problems_of(raw: dict[str, Any]) -> list[str]:
    """Every cross-reference problem of the document *raw*, one line each."""
    return _cross_check(_Raw(raw))


class _Raw:
    """Lenient read access to an unvalidated document, for cross-reference checks."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.exchanges = _mapping(raw.get("exchanges"))
        self.events = _mapping(raw.get("events"))
        self.subscribers = _mapping(raw.get("subscribers"))
        self.schedules = _mapping(raw.get("schedules"))
        defaults = _mapping(raw.get("defaults"))
        retry = _mapping(defaults.get("retry"))
        self.default_delays = retry.get("delays", DEFAULT_DELAYS)

    def exchange_type(self, name: str) -> str:
        return str(_mapping(self.exchanges.get(name)).get("type", "topic"))

    def event_exchange(self, etype: str) -> Any:
        return _mapping(self.events.get(etype)).get("exchange")


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _cross_check(doc: _Raw) -> list[str]:
    problems: list[str] = []
    for name in doc.exchanges:
        if not NAME.match(str(name)) or str(name).startswith("amq."):
            problems.append(f"exchanges.{name}: not a usable exchange name")
    for etype, ev in doc.events.items():
        if not NAME.match(str(etype)) or "*" in etype or "#" in etype:
            problems.append(f"events.{etype}: an event type is a plain routing key")
        exchange = _mapping(ev).get("exchange")
        if isinstance(exchange, str) and exchange not in doc.exchanges:
            problems.append(f"events.{etype}.exchange: exchange {exchange!r} is not declared")
        schema = _mapping(ev).get("schema")
        if isinstance(schema, dict):
            try:
                jsonschema.Draft202012Validator.check_schema(schema)
            except jsonschema.SchemaError as exc:
                problems.append(f"events.{etype}.schema: not a JSON Schema: {exc.message}")
    problems += _check_subscribers(doc)
    problems += _check_schedules(doc)
    return problems


def _check_schedules(doc: _Raw) -> list[str]:
    problems: list[str] = []
    for name, raw in doc.schedules.items():
        sched, where = _mapping(raw), f"schedules.{name}"
        event, cron = sched.get("event"), sched.get("cron")
        if isinstance(event, str) and event not in doc.events:
            problems.append(f"{where}.event: event type {event!r} is not declared")
        if ("cron" in sched) == ("every" in sched):
            problems.append(f"{where}: give exactly one of `cron:` or `every:`")
        if isinstance(cron, str) and (len(cron.split()) != 5 or not croniter.is_valid(cron)):
            problems.append(
                f"{where}.cron: {json.dumps(cron)} is not a 5-field cron expression "
                "(minute hour day month weekday)"
            )
        elif isinstance(cron, str) and not _ever_fires(cron):
            problems.append(f"{where}.cron: {json.dumps(cron)} matches no date")
        tz = sched.get("timezone", "UTC")
        if isinstance(tz, str) and not _valid_timezone(tz):
            problems.append(f"{where}.timezone: unknown time zone {tz!r}")
    return problems


def _check_subscribers(doc: _Raw) -> list[str]:
    problems: list[str] = []
    owners: dict[str, str] = {}
    for name, raw in doc.subscribers.items():
        sub, where = _mapping(raw), f"subscribers.{name}"
        queue = sub.get("queue") or name
        if not isinstance(queue, str) or not NAME.match(queue) or queue.startswith("amq."):
            problems.append(f"{where}.queue: {queue!r} is not a usable queue name")
            continue
        retry = _mapping(sub.get("retry"))
        delays = _strings(retry.get("delays", doc.default_delays))
        labels = [_label_or_none(d) for d in delays]
        if len(set(labels)) != len(labels):
            problems.append(f"{where}.retry.delays: the same delay appears twice")
        unique = list(dict.fromkeys(d for d in labels if d))  # a repeat is reported above
        owned = [queue, f"{queue}.dlq", *(f"{queue}.retry.{d}" for d in unique)]
        owned += partition_queues(queue, sub)
        for q in owned:
            if q in owners:
                problems.append(
                    f"{where}.queue: queue {q!r} is already owned by subscriber {owners[q]!r}"
                )
            owners.setdefault(q, name)
        bindings = sub.get("bindings", [])
        for i, b in enumerate(bindings if isinstance(bindings, list) else []):
            problems += _check_binding(doc, f"{where}.bindings[{i}]", _mapping(b))
        problems += _check_backfill(doc, where, sub)
        problems += check_ordered(doc, where, sub)
        publishes = sub.get("publishes", [])
        for i, etype in enumerate(publishes if isinstance(publishes, list) else []):
            if isinstance(etype, str) and etype not in doc.events:
                problems.append(f"{where}.publishes[{i}]: event type {etype!r} is not declared")
    return problems


def _check_binding(doc: _Raw, where: str, binding: dict[str, Any]) -> list[str]:
    exchange = binding.get("exchange")
    if not isinstance(exchange, str):
        return []
    if exchange not in doc.exchanges:
        return [f"{where}.exchange: exchange {exchange!r} is not declared"]
    kind = doc.exchange_type(exchange)
    keys = _strings(binding.get("keys", []))
    if kind == "fanout":
        return []
    if not keys:
        return [f"{where}.keys: give at least one routing key"]
    on_exchange = [t for t in doc.events if doc.event_exchange(t) == exchange]
    problems = []
    for j, key in enumerate(keys):
        hit = any(matches(key, t) if kind == "topic" else key == t for t in on_exchange)
        if not hit:
            problems.append(
                f"{where}.keys[{j}]: {key!r} matches no event type declared on exchange "
                f"{exchange!r}"
            )
    return problems


def _label_or_none(text: str) -> str | None:
    try:
        return normalise(text)
    except ValueError:
        return None


def _ever_fires(cron: str) -> bool:
    try:
        croniter(cron).get_next(float)
    except Exception:  # croniter raises its own errors for impossible dates
        return False
    return True


def _valid_timezone(name: str) -> bool:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True
