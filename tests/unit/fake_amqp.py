"""A stand-in for the part of an aiormq channel that writes: its connection's bounded write
queue, and its close, observed as aiormq does (`closing` gives a new observer each time)."""

from __future__ import annotations

import asyncio
from typing import Any


class WritingChannel:
    def __init__(self, queue_size: int = 0) -> None:
        self.is_closed = False
        self.write_queue: asyncio.Queue[Any] = asyncio.Queue(queue_size)
        self._closing = asyncio.get_running_loop().create_future()

    @property
    def closing(self) -> asyncio.Future[Any]:
        observer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def closed(_: object) -> None:
            if not observer.done():
                observer.set_result(None)

        self._closing.add_done_callback(closed)
        return observer

    def close(self) -> None:
        """The connection died: the channel closes, its queue is never drained again."""
        self.is_closed = True
        if not self._closing.done():
            self._closing.set_result(None)

    async def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        if self.is_closed:
            raise RuntimeError("channel closed")
        await self.write_queue.put(("ack", delivery_tag, multiple))
