"""Drop a publisher's connection once the broker stops confirming, so the events go elsewhere.

Seen on RabbitMQ 3.10.8 (tests/integration/test_cluster.py): after a kill -9 of the node a
publisher was connected to (the quorum queue's leader), its reconnection to the next node went
on nacking every publish, each sent again and nacked again for as long as the test waited
(~3,300 outstanding, a nack every few ms, no confirm), while a new connection to that node was
confirmed at once. So only a confirm counts as progress: a stream of nacks is a stall too.

The clock runs while publishes are outstanding, a socket is open (connected, or still restoring
its channels: a publish waits for that without a timeout of its own) and the broker blocks
nothing: a broker alarm (`connection.blocked`) is waited out instead (`bus.amqp.flow`). When it
runs out, the connection is closed; the robust connection makes a new one (to the next node of a
cluster) and the publisher sends the outstanding events again (same ids: a copy is absorbed
downstream).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aio_pika.abc import AbstractRobustConnection

from bus.amqp.flow import Flow

log = logging.getLogger(__name__)
STALL_SECONDS = 5.0  # Publisher(stall=): no confirm for this long, publishes outstanding


class StallWatch:
    """Counts a publisher's outstanding publishes and when the broker last confirmed one."""

    def __init__(
        self,
        seconds: float | None,
        connection: Callable[[], AbstractRobustConnection | None],
        flow: Callable[[], Flow | None],
        *,
        on_drop: Callable[[], None],
        where: Callable[[], str],
    ) -> None:
        """*seconds* None: count, never drop. *connection* and *flow* give the publisher's
        current ones; *on_drop* runs before a stalled connection is closed; *where* names it
        in the log line."""
        self.seconds = seconds
        self._connection = connection
        self._flow = flow
        self._on_drop = on_drop
        self._where = where
        self.outstanding = 0  # basic.publish calls awaiting their confirm
        self.answered = time.monotonic()  # the last confirm, or since when we wait
        self.stalls = 0  # connections dropped because confirms stopped
        self._task: asyncio.Task[None] | None = None

    # -- what the publisher tells it -------------------------------------------------------

    def sent(self) -> None:
        if not self.outstanding:
            self.answered = time.monotonic()  # the clock starts with the first one
        self.outstanding += 1

    def confirmed(self) -> None:
        self.answered = time.monotonic()  # a nack is no progress: only this is

    def settled(self) -> None:
        self.outstanding -= 1

    # -- the watchdog ----------------------------------------------------------------------

    def start(self) -> None:
        if self.seconds is not None and self._task is None:
            self._task = asyncio.create_task(self._watch(), name="bus-publisher-stall")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _watch(self) -> None:
        assert self.seconds is not None
        period = min(1.0, self.seconds / 4)
        while True:
            await asyncio.sleep(period)
            try:
                await self.check()
            except Exception:  # the watchdog must outlive whatever went wrong once
                log.exception("publisher stall watchdog")

    async def check(self) -> None:
        """Close the connection if it has been quiet for too long (see the module)."""
        if self.seconds is None:
            return
        flow = self._flow()
        conn = self._connection()
        transport = None if conn is None or conn.is_closed else conn.transport
        # the clock runs while a socket is open (restoring channels, or connected): between
        # reconnect attempts the robust connection keeps its own time
        if (
            not self.outstanding or transport is None or transport.connection.is_closed
            or (flow is not None and flow.blocked)
        ):  # fmt: skip
            self.answered = time.monotonic()
            return
        quiet = time.monotonic() - self.answered
        if quiet < self.seconds:
            return
        self.stalls += 1
        restoring = conn is not None and not conn.connected.is_set()
        log.warning(
            "no confirm from RabbitMQ for %.0f s with %d publishes outstanding on connection "
            "%s%s: reconnecting and sending them again (same ids)",
            quiet, self.outstanding, self._where(),
            " (its channels were never restored)" if restoring else "",
        )  # fmt: skip
        self.answered = time.monotonic()
        self._on_drop()
        await transport.connection.close(
            ConnectionResetError(f"no confirm for {quiet:.0f} s: reconnecting")
        )
