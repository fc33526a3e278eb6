"""A connection held open to a broker for the whole test run: proof that nothing stopped it.

Stopping the RabbitMQ application (`stop_app`), stopping or restarting the node, or closing its
connections all close this connection, so a run that ends with it still open and answering has
left that broker running untouched.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import TracebackType

import aio_pika
from aio_pika.abc import AbstractConnection


class ConnectionWitness:
    """`with ConnectionWitness(url) as w: ...; w.problem()` is None while the broker stayed up."""

    def __init__(self, url: str, name: str = "bus-tests:witness") -> None:
        self.url = url
        self.name = name
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name=name)
        self.conn: AbstractConnection | None = None
        self.opened = time.monotonic()
        self.closed_because: str | None = None

    def _run(self, coro: object, timeout: float = 15.0) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def __enter__(self) -> ConnectionWitness:
        self.thread.start()
        self.conn = self._run(
            aio_pika.connect(self.url, client_properties={"connection_name": self.name})
        )  # type: ignore[assignment]
        assert self.conn is not None
        self.conn.close_callbacks.add(self._closed)
        self.opened = time.monotonic()
        return self

    def _closed(self, _: object, exc: BaseException | None = None) -> None:
        if self.closed_because is None:
            seconds = time.monotonic() - self.opened
            self.closed_because = f"{type(exc).__name__}: {exc} ({seconds:.0f}s into the run)"

    def problem(self) -> str | None:
        """None while the connection is open and the broker answers on it; else what happened."""
        if self.conn is None or self.conn.is_closed:
            return f"its connection was closed: {self.closed_because or 'unknown reason'}"

        async def ping() -> None:
            assert self.conn is not None
            channel = await self.conn.channel()
            await channel.close()

        try:
            self._run(ping())
        except Exception as exc:
            return f"it no longer answers on the connection opened at the start: {exc!r}"
        return None

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self.conn is not None and not self.conn.is_closed:
                self.conn.close_callbacks.discard(self._closed)
                self._run(self.conn.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()
