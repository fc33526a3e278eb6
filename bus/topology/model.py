"""Load and validate `topology/topology.yaml` (version 1), reporting every problem at once.

Problems carry their path in the file, e.g.
``subscribers.email.retry.delays[1]: "5 minutes" is not a duration``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from bus.durations import (
    normalise,
    normalise_rate,
    parse_ms,
    parse_rate,
)
from bus.errors import TopologyError
from bus.topology.checks import DEFAULT_DELAYS as DEFAULT_DELAYS
from bus.topology.checks import problems_of
from bus.topology.history import DEFAULT_HISTORY_AGE as DEFAULT_HISTORY_AGE
from bus.topology.history import History as History
from bus.topology.history import HistorySpec as HistorySpec
from bus.topology.history import history_of
from bus.topology.history import history_stream as history_stream
from bus.topology.ordering import (
    DEFAULT_PARTITIONS,
    PARTITION_EXCHANGE_SUFFIX,
    UNROUTED_EXCHANGE_SUFFIX,
    Partitioner,
)
from bus.topology.routing import matches
from bus.topology.suggest import did_you_mean

Duration = Annotated[str, AfterValidator(normalise)]
Rate = Annotated[str, AfterValidator(normalise_rate)]
Concurrency = Annotated[int, Field(ge=1, le=65535)]
_HANDLERS = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class QueueType(StrEnum):
    QUORUM = "quorum"
    CLASSIC = "classic"


class ExchangeType(StrEnum):
    TOPIC = "topic"
    FANOUT = "fanout"
    DIRECT = "direct"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RetrySpec(_Strict):
    delays: list[Duration] | None = None
    delivery_limit: Annotated[int, Field(ge=1)] | None = None


DEFAULT_DELIVERY_LIMIT = 10


class DefaultRetrySpec(_Strict):
    """`defaults.retry`: a field left out keeps the built-in default."""

    delays: list[Duration] = Field(default_factory=lambda: list(DEFAULT_DELAYS))
    delivery_limit: Annotated[int, Field(ge=1)] | None = DEFAULT_DELIVERY_LIMIT


Replicas = Annotated[int, Field(ge=1, le=255)]


class DefaultsSpec(_Strict):
    queue_type: QueueType = QueueType.QUORUM
    prefetch: Annotated[int, Field(ge=1, le=65535)] = 32
    retry: DefaultRetrySpec = DefaultRetrySpec()
    # quorum only: x-quorum-initial-group-size, the members each queue gets on a cluster
    # (left out: the broker's default)
    replicas: Replicas | None = None
    concurrency: Concurrency | None = None  # None: the prefetch
    rate_limit: Rate | None = None
    timeout: Duration | None = None


class ExchangeSpec(_Strict):
    type: ExchangeType = ExchangeType.TOPIC
    history: HistorySpec | None = None


class EventSpec(_Strict):
    exchange: str
    description: str = ""
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    # the ordering key: a field of the data (dotted path), sent as header `bus-key`
    key: Annotated[str, Field(pattern=r"^[^.\s]+(\.[^.\s]+)*$")] | None = None


class BindingSpec(_Strict):
    exchange: str
    keys: list[str] = Field(default_factory=list)


class SubscriberSpec(_Strict):
    handlers: Annotated[str, Field(pattern=_HANDLERS.pattern)]
    queue: str | None = None
    bindings: list[BindingSpec] = Field(default_factory=list)
    retry: RetrySpec | None = None
    queue_type: QueueType | None = None
    prefetch: Annotated[int, Field(ge=1, le=65535)] | None = None
    replicas: Replicas | None = None
    concurrency: Concurrency | None = None
    rate_limit: Rate | None = None
    timeout: Duration | None = None
    # consumer processes of `bus run` under one parent (`--processes` wins); one when left out
    processes: Annotated[int, Field(ge=1, le=256)] | None = None
    description: str = ""
    # event types its handlers may publish (`ctx.publish`): the least-privilege export grants
    # its user exactly these; none when left out
    publishes: list[str] = Field(default_factory=list)
    # copy this long of history into the queue when `bus topology apply` first creates it
    backfill: Duration | None = None
    # events of one key (`events.<type>.key`) one at a time, in publish order
    ordered: bool = False
    partitions: Annotated[int, Field(ge=1, le=1024)] | None = None  # default DEFAULT_PARTITIONS
    # how events reach the partitions: "bus" (moved from the queue by the bus) or
    # "exchange" (the broker routes them there by a header the bus's producers stamp)
    partitioner: Partitioner | None = None


class ScheduleSpec(_Strict):
    event: str
    cron: str | None = None
    every: Duration | None = None
    timezone: str = "UTC"
    data: dict[str, Any] = Field(default_factory=dict)
    catch_up: Duration | None = None


class TopologyFile(_Strict):
    version: Literal[1]
    defaults: DefaultsSpec = DefaultsSpec()
    exchanges: dict[str, ExchangeSpec] = Field(default_factory=dict)
    events: dict[str, EventSpec] = Field(default_factory=dict)
    subscribers: dict[str, SubscriberSpec] = Field(default_factory=dict)
    schedules: dict[str, ScheduleSpec] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Binding:
    exchange: str
    key: str


@dataclass(frozen=True, slots=True)
class Subscriber:
    """A subscriber with the defaults applied: everything the planner and runtime need."""

    name: str
    queue: str
    handlers: str
    queue_type: QueueType
    prefetch: int
    delays: tuple[str, ...]  # normalised labels, e.g. ("1m", "5m", "1h")
    delivery_limit: int | None
    bindings: tuple[Binding, ...]
    publishes: tuple[str, ...] = ()
    replicas: int | None = None  # quorum queues' initial group size
    concurrency: int = 32  # handlers in flight; sizes the thread (and process) pools
    rate_limit: str | None = None  # "10/s": handler starts per process
    timeout: str | None = None  # "2m": a handler running longer fails with HandlerTimeout
    backfill: str | None = None  # "7d": history copied in when its queue is first created
    processes: int = 1  # consumer processes `bus run` starts (bus.consume.processes)
    ordered: bool = False
    partitions: int = 0  # ordered: how many partition queues; 0 when not ordered
    partitioner: Partitioner = Partitioner.BUS  # ordered: how events reach the partitions

    @property
    def rate(self) -> float | None:
        """Handler starts per second, or None."""
        return parse_rate(self.rate_limit) if self.rate_limit else None

    @property
    def timeout_ms(self) -> int | None:
        return parse_ms(self.timeout) if self.timeout else None

    @property
    def dlq(self) -> str:
        return f"{self.queue}.dlq"

    def retry_queue(self, delay: str) -> str:
        return f"{self.queue}.retry.{delay}"

    @property
    def retry_queues(self) -> tuple[str, ...]:
        return tuple(self.retry_queue(d) for d in self.delays)

    def partition_queue(self, index: int) -> str:
        """`Q.p<index>`: an ordered subscriber's partition, one active consumer at a time."""
        return f"{self.queue}.p{index}"

    def hold_queue(self, index: int) -> str:
        """`Q.p<index>.hold`: where a held key's later events wait, a lap at a time."""
        return f"{self.queue}.p{index}.hold"

    def partition_report_queue(self, index: int) -> str:
        """A one-message queue: the newest report of `Q.p<index>`'s active consumer."""
        return f"bus.state.{self.queue}.p{index}"

    @property
    def partition_queues(self) -> tuple[str, ...]:
        return tuple(self.partition_queue(i) for i in range(self.partitions))

    @property
    def partition_exchange(self) -> str | None:
        """`Q.partitions`: the headers exchange in front of the partitions (`partitioner:
        exchange`), None when the bus moves the events itself."""
        if not self.ordered or self.partitioner is not Partitioner.EXCHANGE:
            return None
        return f"{self.queue}{PARTITION_EXCHANGE_SUFFIX}"

    @property
    def unrouted_exchange(self) -> str:
        """`Q.unrouted`: where `Q.partitions` sends what it cannot route (to `Q`)."""
        return f"{self.queue}{UNROUTED_EXCHANGE_SUFFIX}"


@dataclass(frozen=True, slots=True)
class Schedule:
    name: str
    event: str
    cron: str | None
    every_ms: int | None
    timezone: str
    data: dict[str, Any]
    catch_up_ms: int | None


@dataclass(frozen=True)
class Topology:
    """A validated topology file."""

    spec: TopologyFile
    source: str = "topology"

    @property
    def exchanges(self) -> dict[str, ExchangeSpec]:
        return self.spec.exchanges

    @property
    def events(self) -> dict[str, EventSpec]:
        return self.spec.events

    @property
    def subscriber_names(self) -> list[str]:
        return list(self.spec.subscribers)

    def subscriber(self, name: str) -> Subscriber:
        """The resolved subscriber *name*; KeyError lists the declared ones."""
        try:
            s = self.spec.subscribers[name]
        except KeyError:
            known = ", ".join(self.spec.subscribers) or "none"
            raise KeyError(f"no subscriber {name!r} in {self.source} (declared: {known})") from None
        d = self.spec.defaults
        retry_delays = s.retry.delays if s.retry and s.retry.delays is not None else None
        delays = retry_delays if retry_delays is not None else d.retry.delays
        limit = s.retry.delivery_limit if s.retry and s.retry.delivery_limit else None
        prefetch = s.prefetch or d.prefetch
        return Subscriber(
            name=name,
            queue=s.queue or name,
            handlers=s.handlers,
            queue_type=s.queue_type or d.queue_type,
            prefetch=prefetch,
            delays=tuple(delays),
            delivery_limit=limit or d.retry.delivery_limit,
            bindings=tuple(Binding(b.exchange, k) for b in s.bindings for k in b.keys or ["#"]),
            publishes=tuple(dict.fromkeys(s.publishes)),
            replicas=s.replicas or d.replicas,
            concurrency=s.concurrency or d.concurrency or prefetch,
            rate_limit=s.rate_limit or d.rate_limit,
            timeout=s.timeout or d.timeout,
            backfill=s.backfill,
            processes=s.processes or 1,
            ordered=s.ordered,
            partitions=(s.partitions or DEFAULT_PARTITIONS) if s.ordered else 0,
            partitioner=(s.partitioner or Partitioner.BUS) if s.ordered else Partitioner.BUS,
        )

    def history(self, exchange: str) -> History | None:
        """The history kept for *exchange*, or None when it keeps none (or is not declared)."""
        spec = self.spec.exchanges.get(exchange)
        if spec is None or spec.history is None:
            return None
        return history_of(exchange, spec.history)

    def receivers(self, event_type: str) -> list[Subscriber]:
        """The subscribers whose bindings take *event_type*, as RabbitMQ routes it."""
        exchange = self.events[event_type].exchange
        kind = self.exchanges[exchange].type if exchange in self.exchanges else None
        return [
            sub for sub in self.subscribers()
            if any(b.exchange == exchange and (
                kind is ExchangeType.FANOUT
                or (kind is ExchangeType.DIRECT and b.key == event_type)
                or (kind is ExchangeType.TOPIC and matches(b.key, event_type))
            ) for b in sub.bindings)
        ]  # fmt: skip

    def partition_counts(self, event_type: str) -> tuple[int, ...]:
        """The partition counts of the subscribers of *event_type* whose partitions the broker
        feeds (`partitioner: exchange`): a producer stamps `bus-partition-<N>` for each."""
        counts = {s.partitions for s in self.receivers(event_type) if s.partition_exchange}
        return tuple(sorted(counts))

    def histories(self) -> list[History]:
        return [h for name in self.spec.exchanges if (h := self.history(name)) is not None]

    def subscribers(self) -> list[Subscriber]:
        return [self.subscriber(n) for n in self.spec.subscribers]

    def schedules(self) -> list[Schedule]:
        return [
            Schedule(
                name=n,
                event=s.event,
                cron=s.cron,
                every_ms=parse_ms(s.every) if s.every else None,
                timezone=s.timezone,
                data=dict(s.data),
                catch_up_ms=parse_ms(s.catch_up) if s.catch_up else None,
            )
            for n, s in self.spec.schedules.items()
        ]


def load(path: str | Path) -> Topology:
    """Read and validate the topology file at *path*; raises TopologyError with every problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError([f"cannot read it: {exc.strerror or exc}"], source=str(p)) from None
    return loads(text, source=str(p))


def loads(text: str, source: str = "topology") -> Topology:
    """Validate topology YAML given as text."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise TopologyError([f"{where}not valid YAML: {problem}"], source=source) from None
    return from_dict(raw, source=source)


def from_dict(raw: Any, source: str = "topology") -> Topology:
    """Validate an already-parsed topology document; every problem is reported at once."""
    if not isinstance(raw, dict):
        raise TopologyError(["the file must be a mapping with `version: 1`"], source=source)
    problems: list[str] = []
    spec: TopologyFile | None = None
    try:
        spec = TopologyFile.model_validate(raw)
    except ValidationError as exc:
        problems += _pydantic_problems(exc)
    # Cross-references are checked on the raw document too, so that a typo in one place does
    # not hide a dangling reference in another.
    problems += [p for p in problems_of(raw) if p not in problems]
    if problems or spec is None:
        raise TopologyError(problems or ["invalid topology"], source=source)
    return Topology(spec, source=source)


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after[normalise(), str]",) or str(part).startswith("function-"):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _pydantic_problems(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        kind, msg = err["type"], err["msg"]
        if kind == "extra_forbidden":
            msg = "unknown key" + did_you_mean(TopologyFile, tuple(err["loc"]))
        elif kind == "missing":
            msg = "is required"
        elif kind == "literal_error" and err["loc"] == ("version",):
            msg = f"unsupported version {json.dumps(err.get('input'))}: this bus reads version 1"
        elif kind == "string_pattern_mismatch" and err["loc"][-1] == "handlers":
            msg = f'{json.dumps(err.get("input"))} is not "module:attribute"'
        elif kind == "value_error":
            msg = msg.removeprefix("Value error, ")
        problems.append(f"{_path(tuple(err['loc']))}: {msg}")
    return problems
