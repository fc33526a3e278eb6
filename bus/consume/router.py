"""Route event types to handlers: `@router.on("order.placed")`, patterns as RabbitMQ's topic.

A handler is `h(event, ctx)`. The event is parsed from the first parameter's annotation: a
pydantic model (or any type pydantic can validate), or `dict`/`Any` for the raw data. Where it
runs follows from how it is written (`Executor`): `async def` on the event loop, plain `def`
in a thread pool, `executor="process"` in a process pool. What cannot cross into a process is
refused here, when the handler is registered, never when its first event arrives.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import TypeAdapter

from bus.durations import parse_ms
from bus.sagas.saga import Saga, Step
from bus.topology.routing import is_pattern, matches

HandlerFunc = Callable[[Any, Any], Any]  # async def, or a plain def (thread or process)
_RAW = (inspect.Parameter.empty, Any, dict, object, Mapping, typing.Mapping)


class Executor(StrEnum):
    """Where a handler runs."""

    LOOP = "loop"  # async def: on the event loop
    THREAD = "thread"  # plain def: in the subscriber's thread pool
    PROCESS = "process"  # plain def, executor="process": in the subscriber's process pool


@dataclass(frozen=True)
class Handler:
    pattern: str
    name: str
    func: HandlerFunc
    adapter: TypeAdapter[Any] | None  # None: the handler takes the decoded JSON as it is
    executor: Executor = Executor.LOOP
    batch: int | None = None  # a batch handler: up to this many events per call
    flush: float = 1.0  # seconds a batch waits for more after its first event

    def parse_data(self, data: Any) -> Any:
        """The event object the handler expects; raises pydantic.ValidationError."""
        return data if self.adapter is None else self.adapter.validate_python(data)

    def parse_json(self, body: bytes) -> Any:
        """Parse straight from the body, one pass; raises pydantic.ValidationError."""
        assert self.adapter is not None
        return self.adapter.validate_json(body)


class Router:
    """Handlers of one subscriber. Exact types win over patterns; then first registered wins."""

    def __init__(self) -> None:
        self._handlers: list[Handler] = []
        self.sagas: list[Saga[Any]] = []
        self._cache: dict[str, Handler | None] = {}
        self.shutdown_hooks: list[Callable[[], Awaitable[None]]] = []

    def on_shutdown(self, func: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """Register `async def hook()`, run once the service has drained (close pools, clients)."""
        self.shutdown_hooks.append(func)
        return func

    def on(
        self,
        pattern: str,
        *,
        name: str | None = None,
        executor: str | None = None,
        batch: int | None = None,
        flush: str = "1s",
    ) -> Callable[[HandlerFunc], HandlerFunc]:
        """Register `handler(event, ctx)` for an event type or topic pattern.

        `async def` runs on the event loop, a plain `def` in a thread pool; *executor*
        ``"process"`` runs a plain `def` in a process pool (CPU-bound work). With *batch*,
        `async def handler(events: list[T], ctx: BatchContext)` gets up to *batch* events at
        once, or fewer when *flush* passed since the first of them.
        """

        def register(func: HandlerFunc) -> HandlerFunc:
            kind = _executor_of(func, executor)
            if batch is not None and (kind is not Executor.LOOP or batch < 1):
                raise TypeError(
                    f"handler {func.__qualname__}: a batch handler is an `async def` taking "
                    "(events: list[T], ctx), with batch >= 1"
                )
            try:
                flush_s = parse_ms(flush) / 1000
            except ValueError as exc:
                raise TypeError(f"handler {func.__qualname__}: flush {exc}") from None
            adapter = _adapter_for(func, batch=batch is not None)
            if kind is Executor.PROCESS:
                _check_crosses(func, adapter)
            label = name or f"{func.__module__}.{func.__qualname__}"
            self._handlers.append(Handler(pattern, label, func, adapter, kind, batch, flush_s))
            self._cache.clear()
            return func

        return register

    def include_saga(self, saga: Saga[Any]) -> None:
        """Host *saga*: each of its steps handles its event type (one of the subscriber's
        bindings), one instance per key, in the subscriber's store."""
        if any(s.name == saga.name for s in self.sagas):
            raise TypeError(f"saga {saga.name!r} is included twice")
        self.sagas.append(saga)
        for step in saga.steps:
            self._add_step(step)
        saga.on_step(self._add_step)  # steps declared after the include

    def _add_step(self, step: Step) -> None:
        self._handlers.append(Handler(step.event_type, step.name, step.handle, step.adapter))
        self._cache.clear()

    @property
    def executors(self) -> set[Executor]:
        """The executors its handlers need."""
        return {h.executor for h in self._handlers}

    @property
    def largest_batch(self) -> int:
        """The largest `batch=` of its handlers (0 without batch handlers)."""
        return max((h.batch or 0 for h in self._handlers), default=0)

    def include(self, other: Router) -> None:
        """Add every handler of *other* (for splitting a service's handlers over modules)."""
        self._handlers.extend(other._handlers)
        for saga in other.sagas:
            self.sagas.append(saga)
            saga.on_step(self._add_step)
        self.shutdown_hooks.extend(other.shutdown_hooks)
        self._cache.clear()

    @property
    def handlers(self) -> list[Handler]:
        return list(self._handlers)

    def match(self, event_type: str) -> Handler | None:
        """The handler for *event_type*, or None when no registered pattern matches it."""
        if event_type not in self._cache:
            exact = [
                h for h in self._handlers if not is_pattern(h.pattern) and h.pattern == event_type
            ]
            wild = [
                h
                for h in self._handlers
                if is_pattern(h.pattern) and matches(h.pattern, event_type)
            ]
            found = (exact or wild)[0] if exact or wild else None
            self._cache[event_type] = found
        return self._cache[event_type]


def _adapter_for(func: HandlerFunc, *, batch: bool = False) -> TypeAdapter[Any] | None:
    params = list(inspect.signature(func).parameters.values())
    if len(params) != 2:
        raise TypeError(f"handler {func.__qualname__} must take (event, ctx)")
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:
        raise TypeError(f"cannot resolve annotations of {func.__qualname__}: {exc}") from None
    annotation = hints.get(params[0].name, inspect.Parameter.empty)
    if batch:  # list[T]: each event is parsed as T
        if typing.get_origin(annotation) in (list, typing.List):  # noqa: UP006
            annotation = typing.get_args(annotation)[0] if typing.get_args(annotation) else Any
        elif annotation is not inspect.Parameter.empty:
            raise TypeError(f"batch handler {func.__qualname__} must take (events: list[T], ctx)")
    origin = typing.get_origin(annotation) or annotation
    if annotation in _RAW or origin in (dict, Mapping):
        return None
    return TypeAdapter(annotation)


def _executor_of(func: HandlerFunc, executor: str | None) -> Executor:
    is_async = inspect.iscoroutinefunction(func)
    if executor is None:
        return Executor.LOOP if is_async else Executor.THREAD
    try:
        kind = Executor(executor)
    except ValueError:
        raise TypeError(
            f"handler {func.__qualname__}: executor {executor!r} is not one of "
            f"{', '.join(repr(e.value) for e in Executor)}"
        ) from None
    if is_async and kind is not Executor.LOOP:
        raise TypeError(
            f"handler {func.__qualname__} is `async def`: it runs on the event loop; write a "
            f"plain `def` to run it in a {kind.value}"
        )
    if not is_async and kind is Executor.LOOP:
        raise TypeError(f"handler {func.__qualname__} must be `async def` to run on the loop")
    return kind


def _check_crosses(func: HandlerFunc, adapter: TypeAdapter[Any] | None) -> None:
    """A process handler is sent by reference (module and name) and its event by pickle."""
    where = f"handler {func.__qualname__} (executor='process')"
    if not inspect.isfunction(func) or func.__name__ == "<lambda>":
        raise TypeError(f"{where}: only a plain module-level `def` can run in a process")
    if "<locals>" in func.__qualname__ or func.__module__ == "__main__":
        raise TypeError(
            f"{where}: it must be defined at the top level of an importable module (not "
            "inside a function, not in __main__), so that a worker process can import it"
        )
    if adapter is None:
        return
    hints = typing.get_type_hints(func)
    first = next(iter(inspect.signature(func).parameters))
    for kind in _types_in(hints.get(first)):
        if "<locals>" in kind.__qualname__ or kind.__module__ == "__main__":
            raise TypeError(
                f"{where}: its event type {kind.__qualname__} must be defined at the top "
                "level of an importable module, or it cannot be pickled into the process"
            )


def _types_in(annotation: Any) -> list[type]:
    if isinstance(annotation, type):
        return [annotation]
    return [t for arg in typing.get_args(annotation) for t in _types_in(arg)]
