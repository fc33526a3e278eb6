"""A stand-in for the part of an aiormq channel that writes: its connection's bounded write
queue, and aiormq's own close (`aiormq.base.Base`: a lost connection rejects the channel's
`closing` with the error, and `closing` hands out observers)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiormq.base import Base


class WritingChannel(Base):
    def __init__(self, queue_size: int = 0) -> None:
        super().__init__(loop=asyncio.get_running_loop())
        self.write_queue: asyncio.Queue[Any] = asyncio.Queue(queue_size)

    @classmethod
    def full(cls) -> WritingChannel:
        """A channel whose connection's write queue has no room: one frame the writer has not
        taken yet."""
        channel = cls(queue_size=1)
        channel.write_queue.put_nowait("never drained")
        return channel

    async def lose_connection(self) -> None:
        """The connection died: the channel closes, its queue is never drained again."""
        await self.close(ConnectionResetError("connection lost"))

    def close_now(self) -> None:
        """Closed before the current loop turn ends (as aiormq marks it on a channel close)."""
        self._closing.set_result(None)

    async def _on_close(self, exc: BaseException | type[BaseException] | None = None) -> None:
        return None

    def __str__(self) -> str:
        return "fake channel"

    async def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        if self.is_closed:
            raise RuntimeError("channel closed")
        await self.write_queue.put(("ack", delivery_tag, multiple))

    async def basic_nack(
        self, delivery_tag: int, multiple: bool = False, requeue: bool = True, wait: bool = True
    ) -> None:
        if self.is_closed:
            raise RuntimeError("channel closed")
        await self.write_queue.put(("nack", delivery_tag, requeue))
