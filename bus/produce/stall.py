"""Drop a publisher's connection once the broker stops confirming, so the events go elsewhere.

One rule for every way of publishing (`publish` one at a time or concurrently, `publish_many`,
`SyncPublisher`, a handler's `ctx.publish`, the relay, the retry hand-off): while an event waits
for its confirm, through all the times it is sent again, the broker must confirm *something*
on the connection within `STALL_SECONDS` (5 s). A nack is no progress: a connection that
answers only with nacks (`NACKS` of them, for `NACKED_SECONDS`, 2 s) is dead too, sooner than
a silent one, because it is plainly alive and refusing. When the time runs out, the connection
is closed; the robust connection makes a new one (to the next node of a cluster) and the waiting
events are sent again (same ids: a copy is absorbed downstream).

Seen on RabbitMQ 3.10.8 after a kill -9 of the node a publisher was connected to (the quorum
queue's leader): its reconnection to the next node went on nacking every publish, each sent
again and nacked again for as long as one waited, while a new connection to that node was
confirmed at once.

The clock runs while events wait, a socket is open (connected, or still restoring its channels:
a publish waits for that) and the broker blocks nothing: a broker alarm (`connection.blocked`)
is waited out instead (`bus.amqp.flow`). Between reconnect attempts the robust connection keeps
its own time. It counts events, not `basic.publish` calls: a one-at-a-time publisher whose
event is nacked, waits a moment and sends it again has nothing in flight between attempts, and
must not start afresh each time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aio_pika.abc import AbstractRobustConnection

from bus.amqp.flow import Flow

log = logging.getLogger(__name__)
STALL_SECONDS = 5.0  # Publisher(stall=): no confirm for this long while events wait
NACKED_SECONDS = 2.0  # ... or only nacks (NACKS of them at least) for this long
NACKS = 3


class ConfirmClock:
    """The decision alone, with the time given: is a connection dead?

    `sent` when an event starts waiting for its confirm, `settled` when it stops (confirmed,
    or given up), `confirmed` and `nacked` for each answer of the broker; `quiet(now, ...)`
    says how long the connection has confirmed nothing when that is too long, else None.
    """

    def __init__(self, seconds: float | None, now: float = 0.0) -> None:
        self.seconds = seconds  # None: never dead
        # a connection that answers, but only with nacks, is given up sooner
        self.nacked_seconds = None if seconds is None else min(NACKED_SECONDS, seconds)
        self.waiting = 0  # events awaiting their confirm, across their resends
        self.answered = now  # the last confirm, or since when the clock runs
        self.nacks = 0  # nacks since the last confirm

    def sent(self, now: float) -> None:
        if not self.waiting:
            self.answered = now  # the clock starts with the first waiting event
            self.nacks = 0
        self.waiting += 1

    def confirmed(self, now: float) -> None:
        self.answered = now
        self.nacks = 0

    def nacked(self) -> None:
        self.nacks += 1  # no progress: the clock runs on

    def settled(self) -> None:
        self.waiting -= 1

    def quiet(self, now: float, *, connected: bool, blocked: bool) -> float | None:
        """Seconds without a confirm while events waited on an open, unblocked connection,
        once that reaches `seconds`, or `nacked_seconds` with `NACKS` nacks and nothing else
        (drop it); None while it is alive, idle, closed or blocked (the clock then starts
        afresh)."""
        if self.seconds is None or not self.waiting or not connected or blocked:
            self.answered = now
            return None
        quiet = now - self.answered
        if quiet >= self.seconds:
            return quiet
        nacked = self.nacked_seconds
        if nacked is not None and self.nacks >= NACKS and quiet >= nacked:
            return quiet
        return None

    def restart(self, now: float) -> None:
        """A new connection gets the whole time."""
        self.answered = now
        self.nacks = 0


class StallWatch:
    """A `ConfirmClock` on a publisher's (robust) connection, and the watchdog that drops
    the connection when the clock says it is dead. Every publish of one connection reports
    here: `sent`/`settled` around an event's whole life (all its resends), `confirmed` and
    `nacked` for the broker's answers."""

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
        self.clock = ConfirmClock(seconds, time.monotonic())
        self._connection = connection
        self._flow = flow
        self._on_drop = on_drop
        self._where = where
        self.stalls = 0  # connections dropped because confirms stopped
        self._task: asyncio.Task[None] | None = None

    @property
    def outstanding(self) -> int:
        """Events awaiting their confirm (each counted once, however often it is resent)."""
        return self.clock.waiting

    # -- what the publishes tell it --------------------------------------------------------

    def sent(self) -> None:
        self.clock.sent(time.monotonic())

    def confirmed(self) -> None:
        self.clock.confirmed(time.monotonic())

    def nacked(self) -> None:
        self.clock.nacked()

    def settled(self) -> None:
        self.clock.settled()

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
        period = min(0.5, self.seconds / 4)
        while True:
            await asyncio.sleep(period)
            try:
                await self.check()
            except Exception:  # the watchdog must outlive whatever went wrong once
                log.exception("publisher stall watchdog")

    async def check(self) -> None:
        """Close the connection if the clock says it is dead (see the module)."""
        flow = self._flow()
        conn = self._connection()
        transport = None if conn is None or conn.is_closed else conn.transport
        socket_open = transport is not None and not transport.connection.is_closed
        blocked = flow is not None and flow.blocked
        now = time.monotonic()
        quiet = self.clock.quiet(now, connected=socket_open, blocked=blocked)
        if quiet is None or transport is None:
            return
        self.stalls += 1
        restoring = conn is not None and not conn.connected.is_set()
        nacks = self.clock.nacks
        log.warning(
            "no confirm from RabbitMQ for %.0f s (%s) with %d events waiting on connection "
            "%s%s: reconnecting and sending them again (same ids)",
            quiet, f"{nacks} nacks" if nacks else "no answer", self.outstanding, self._where(),
            " (its channels were never restored)" if restoring else "",
        )  # fmt: skip
        self.clock.restart(now)
        self._on_drop()
        await transport.connection.close(
            ConnectionResetError(f"no confirm for {quiet:.0f} s: reconnecting")
        )
