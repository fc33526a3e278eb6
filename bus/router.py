"""Route event types to handlers: `@router.on("order.placed")`, patterns as RabbitMQ's topic.

A handler is `async def h(event, ctx)`. The event is parsed from the first parameter's
annotation: a pydantic model (or any type pydantic can validate), or `dict`/`Any` for the raw data.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from bus.routing import is_pattern, matches

HandlerFunc = Callable[[Any, Any], Awaitable[None]]
_RAW = (inspect.Parameter.empty, Any, dict, object, Mapping, typing.Mapping)


@dataclass(frozen=True)
class Handler:
    pattern: str
    name: str
    func: HandlerFunc
    adapter: TypeAdapter[Any] | None  # None: the handler takes the decoded JSON as it is

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
        self._cache: dict[str, Handler | None] = {}
        self.shutdown_hooks: list[Callable[[], Awaitable[None]]] = []

    def on_shutdown(self, func: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """Register `async def hook()`, run once the service has drained (close pools, clients)."""
        self.shutdown_hooks.append(func)
        return func

    def on(self, pattern: str, *, name: str | None = None) -> Callable[[HandlerFunc], HandlerFunc]:
        """Register an `async def handler(event, ctx)` for an event type or topic pattern."""

        def register(func: HandlerFunc) -> HandlerFunc:
            if not inspect.iscoroutinefunction(func):
                raise TypeError(f"handler {func.__qualname__} must be `async def`")
            label = name or f"{func.__module__}.{func.__qualname__}"
            self._handlers.append(Handler(pattern, label, func, _adapter_for(func)))
            self._cache.clear()
            return func

        return register

    def include(self, other: Router) -> None:
        """Add every handler of *other* (for splitting a service's handlers over modules)."""
        self._handlers.extend(other._handlers)
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


def _adapter_for(func: HandlerFunc) -> TypeAdapter[Any] | None:
    params = list(inspect.signature(func).parameters.values())
    if len(params) != 2:
        raise TypeError(f"handler {func.__qualname__} must take (event, ctx)")
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:
        raise TypeError(f"cannot resolve annotations of {func.__qualname__}: {exc}") from None
    annotation = hints.get(params[0].name, inspect.Parameter.empty)
    origin = typing.get_origin(annotation) or annotation
    if annotation in _RAW or origin in (dict, Mapping):
        return None
    return TypeAdapter(annotation)
