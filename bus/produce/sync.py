"""`SyncPublisher`: `Publisher` for synchronous code (Django, Flask, scripts)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable
from concurrent.futures import Future
from typing import Any, TypeVar

from bus.produce.publisher import EventLike, Publisher

T = TypeVar("T")


class SyncPublisher:
    """`Publisher` for synchronous code: an event loop on a background thread.

    Thread-safe; one instance per process is enough. `with SyncPublisher.from_env() as pub:`.
    """

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="bus-publisher", daemon=True
        )
        self._started = False  # the loop's thread runs
        self._connected = False  # the publisher's connect() succeeded

    @classmethod
    def from_env(cls, *, source: str = "bus", **settings: str | None) -> SyncPublisher:
        return cls(Publisher.from_env(source=source, **settings))

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def connect(self) -> SyncPublisher:
        """Connect (again, after a failed attempt); a no-op once connected."""
        if not self._started:
            self._thread.start()
            self._started = True
        if not self._connected:
            self._run(self._publisher.connect())
            self._connected = True
        return self

    def publish(self, event_type: str, data: Any, **kw: Any) -> str:
        """Same as `Publisher.publish`, blocking until the broker confirmed."""
        self._publisher.check(event_type, data)
        return self._run(self._publisher.publish(event_type, data, **kw))

    def publish_many(self, events: Iterable[EventLike], **kw: Any) -> list[str]:
        return self._run(self._publisher.publish_many(list(events), **kw))

    def close(self) -> None:
        if self._started:
            self._run(self._publisher.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()
            self._started = self._connected = False

    def __enter__(self) -> SyncPublisher:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()
