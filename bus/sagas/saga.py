"""A saga: a durable state machine hosted by a subscriber, one instance per key.

```python
refund = Saga("refund", state=RefundState, key="refund_id")

@refund.start("refund.requested")
async def requested(event: RefundRequested, state: RefundState, ctx: SagaContext) -> None:
    ...

router.include_saga(refund)
```

Pure: the declarations, what a step may do (`SagaContext`: publish, set a timeout, complete)
and what an event means for an instance (`decide`). Loading, committing and relaying are the
host's (bus.sagas.host).
"""

from __future__ import annotations

import inspect
import typing
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, TypeAdapter

from bus.errors import Reject
from bus.topology.delays import Delay, seconds_of

S = TypeVar("S", bound=BaseModel)
StepFunc = Callable[[Any, Any, "SagaContext"], Awaitable[None]]

RUNNING = "running"
COMPLETED = "completed"

_EFFECT = uuid.UUID("0f5c7e7a-3b1e-4c55-a1de-5a9a5e0c0a26")


def effect_id(subscriber: str, saga: str, key: str, event_id: str, kind: str, n: int) -> str:
    """The id of the *n*-th *kind* (an event type) effect of a step: the same on every rerun."""
    return str(uuid.uuid5(_EFFECT, f"{subscriber}/{saga}/{key}/{event_id}/{kind}/{n}"))


@dataclass(frozen=True)
class Step:
    """One event type of a saga and the function that handles it."""

    saga: Saga[Any]
    event_type: str
    func: StepFunc
    adapter: TypeAdapter[Any] | None
    starts: bool

    @property
    def name(self) -> str:
        return f"saga:{self.saga.name}.{getattr(self.func, '__name__', 'step')}"

    async def handle(self, event: Any, ctx: Any) -> None:
        """The router's handler: hands the event to the host the dispatcher put on *ctx*."""
        host = getattr(ctx, "sagas", None)
        if host is None:
            raise RuntimeError(f"{self.name}: this subscriber runs no saga host")
        await host.run(self, event, ctx)


class Saga(Generic[S]):
    """A saga named *name*, its state a pydantic model *state*, keyed by the data field *key*
    (a dotted path is allowed) of every event it handles."""

    def __init__(self, name: str, *, state: type[S], key: str) -> None:
        if not name or "/" in name:
            raise ValueError(f"saga name {name!r}: a non-empty name without '/'")
        self.name = name
        self.state = state
        self.key = key
        self._steps: dict[str, Step] = {}
        self._listeners: list[Callable[[Step], None]] = []

    def on_step(self, listener: Callable[[Step], None]) -> None:
        """Call *listener* with every step declared from now on (a router hosting it)."""
        self._listeners.append(listener)

    def start(self, event_type: str) -> Callable[[StepFunc], StepFunc]:
        """Register the step that creates an instance; the same key again is a duplicate."""
        return self._register(event_type, starts=True)

    def on(self, event_type: str) -> Callable[[StepFunc], StepFunc]:
        """Register a step of a running instance."""
        return self._register(event_type, starts=False)

    def _register(self, event_type: str, *, starts: bool) -> Callable[[StepFunc], StepFunc]:
        def register(func: StepFunc) -> StepFunc:
            where = f"saga {self.name!r} step {getattr(func, '__qualname__', func)!r}"
            if not inspect.iscoroutinefunction(func):
                raise TypeError(f"{where} must be `async def (event, state, ctx)`")
            if len(inspect.signature(func).parameters) != 3:
                raise TypeError(f"{where} must take (event, state, ctx)")
            if event_type in self._steps:
                raise TypeError(f"saga {self.name!r} has a step for {event_type!r} already")
            if any(c in event_type for c in "*#"):
                raise TypeError(f"{where}: a saga step takes one event type, not a pattern")
            step = self._steps[event_type] = Step(self, event_type, func, _adapter(func), starts)
            for listener in self._listeners:
                listener(step)
            return func

        return register

    @property
    def steps(self) -> list[Step]:
        return list(self._steps.values())

    def key_of(self, event: Any) -> str:
        """The instance key carried by *event* (a model or the decoded JSON)."""
        value: Any = event
        for part in self.key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else getattr(value, part, None)
            if value is None:
                raise Reject(f"saga {self.name!r}: the event has no key field {self.key!r}")
        return str(value)

    def new_state(self) -> S:
        return self.state()

    def load_state(self, text: str) -> S:
        return self.state.model_validate_json(text)


def _adapter(func: StepFunc) -> TypeAdapter[Any] | None:
    params = list(inspect.signature(func).parameters.values())
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:
        raise TypeError(f"cannot resolve annotations of {func.__qualname__}: {exc}") from None
    annotation = hints.get(params[0].name, inspect.Parameter.empty)
    origin = typing.get_origin(annotation) or annotation
    if annotation in (inspect.Parameter.empty, Any, dict) or origin in (dict, Mapping):
        return None
    return TypeAdapter(annotation)


class Verdict(StrEnum):
    """What an event means for the instance it names."""

    RUN = "run"  # run the step
    IGNORE = "ignore"  # a completed instance, or a start for an instance that exists: ack
    NO_SAGA = "no-saga"  # not a start, and no instance: park


def decide(step: Step, status: str | None) -> Verdict:
    """*status*: the instance's (`running`, `completed`), or None when there is none."""
    if status is None:
        return Verdict.RUN if step.starts else Verdict.NO_SAGA
    if status == COMPLETED or step.starts:
        return Verdict.IGNORE
    return Verdict.RUN


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An event a step publishes: written with the step's commit, sent after it."""

    id: str
    type: str
    data: Any


@dataclass(frozen=True, slots=True)
class Timeout:
    """A delayed event carrying the key, due *seconds* after the step."""

    id: str
    type: str
    data: Any
    seconds: int


Check = Callable[[str, Any], None]


@dataclass
class SagaContext:
    """A step's third argument: the event's context plus what the step does to its instance."""

    saga: str
    key: str
    ctx: Any  # the handler's bus.Context: id, type, attempt, log, correlation_id
    check: Check  # refuses an undeclared type or data failing its schema, at once
    key_field: str
    publishes: list[Outgoing] = field(default_factory=list)
    timeouts: list[Timeout] = field(default_factory=list)
    completed: bool = False

    @property
    def id(self) -> str:
        return str(self.ctx.id)

    @property
    def type(self) -> str:
        return str(self.ctx.type)

    @property
    def attempt(self) -> int:
        return int(self.ctx.attempt)

    @property
    def correlation_id(self) -> str:
        return str(self.ctx.correlation_id)

    @property
    def log(self) -> Any:
        return self.ctx.log

    def _id(self, kind: str, n: int) -> str:
        return effect_id(self.ctx.subscriber, self.saga, self.key, self.id, kind, n)

    async def publish(self, event_type: str, data: Any, *, id: str | None = None) -> str:
        """Publish *event_type* if and when this step commits (once, whatever reruns it)."""
        self.check(event_type, data)
        n = sum(1 for p in self.publishes if p.type == event_type)
        event_id = id or self._id(event_type, n)
        self.publishes.append(Outgoing(event_id, event_type, data))
        return event_id

    async def timeout(self, event_type: str, *, after: Delay) -> str:
        """Deliver *event_type* carrying this instance's key *after* a delay ("3d"), if this
        step commits. Handled like any event; ignored once the instance has completed."""
        seconds = seconds_of(after)
        data = _nest(self.key_field, self.key)
        self.check(event_type, data)
        n = sum(1 for t in self.timeouts if t.type == event_type)
        event_id = self._id(f"timeout:{event_type}", n)
        self.timeouts.append(Timeout(event_id, event_type, data, seconds))
        return event_id

    def complete(self) -> None:
        """End the instance when this step commits: later events for it are ignored."""
        self.completed = True


def _nest(path: str, value: str) -> dict[str, Any]:
    """`{"a": {"b": value}}` for the path "a.b"."""
    out: dict[str, Any] = {}
    here = out
    parts = path.split(".")
    for part in parts[:-1]:
        here[part] = {}
        here = here[part]
    here[parts[-1]] = value
    return out
