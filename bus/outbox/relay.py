"""`bus relay`: outbox rows to the broker, each confirmed before its row is deleted.

One step: claim rows (bus.outbox: whole transactions on PostgreSQL, a lease on SQLite), turn
each into the event a `Publisher` would have sent, publish them with confirms (persistent,
`mandatory`) in insert order, then delete the confirmed rows. A row that is not an event (not
JSON, an undeclared type, data failing its schema) or that the broker returns as unroutable
is set aside with its reason, never dropped and never in the way of the rows behind it. A
broker or database outage only lets rows wait: the relay keeps trying and says so once.
A crash between a confirm and the delete publishes that row again (same id: subscribers run
it once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from bus.envelope import Event, decode_body, new_traceparent
from bus.errors import (
    BrokerUnavailable,
    BusError,
    DatabaseUnavailable,
    InvalidEvent,
    OutboxMissing,
    PublishTimeout,
    UnknownEventType,
    UnroutableError,
)
from bus.loop import name_of
from bus.metrics import Metrics
from bus.outbox.base import OutboxStore, Row
from bus.produce.publisher import Publisher
from bus.produce.window import Window
from bus.settings import DEFAULT_RECONNECT_INTERVAL, redact
from bus.signals import stop_on_signals
from bus.topology.model import Topology

log = logging.getLogger(__name__)
T = TypeVar("T")

BATCH = 1000  # rows per claim (a PostgreSQL claim takes whole transactions, so may take more)
WINDOW = 1000  # confirms in flight
DEADLINE = 10.0  # seconds for a confirm before the step gives up and tries again later
IDLE = 5.0  # PostgreSQL: look again this often even without a NOTIFY
BACKOFF_MAX = 10.0
REPORT_EVERY = 5.0  # refresh the outbox gauges


class Relay:
    """Runs until *stop* is set: `await Relay(outbox, topology, url).run(stop)`."""

    def __init__(
        self,
        outbox: OutboxStore,
        topology: Topology,
        url: str,
        *,
        metrics: Metrics | None = None,
        batch: int = BATCH,
        window: int = WINDOW,
        deadline: float = DEADLINE,
        idle: float = IDLE,
        reconnect_interval: float = DEFAULT_RECONNECT_INTERVAL,
    ) -> None:
        self.outbox = outbox
        self.metrics = metrics or Metrics.default()
        self.batch = batch
        self.window = window
        self.idle = idle
        # an alarm on the broker (connection.blocked) is waited out, not timed out: rows wait
        # in the outbox, and a confirm that only the block delays is never published twice
        self.publisher = Publisher(
            url, topology, source="bus-relay", deadline=deadline, metrics=self.metrics,
            wait_out_blocks=True, reconnect_interval=reconnect_interval,
        )  # fmt: skip
        self._outbox_ok = False
        self._connected_once = False
        self._trouble: str | None = None
        self._counters: dict[str, Any] = {}

    @property
    def ready(self) -> bool:
        """The last claim reached the outbox, the broker connection is up and not blocked."""
        return self._outbox_ok and self.publisher.connected and not self.blocked

    @property
    def blocked(self) -> str:
        """The broker's reason while it blocks publishing (``low on memory``), else ""."""
        flow = self.publisher.flow
        return (flow.reason or "") if flow is not None else ""

    def why_not_ready(self) -> str:
        """What `/readyz` says with its 503 ("" when ready, or when nothing more is known)."""
        if self.blocked:
            return f"broker blocked publishing: {self.blocked}"
        if not self.publisher.connected:
            return "no broker connection"
        return "" if self._outbox_ok else "the outbox is not reachable"

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until *stop*; a step in progress finishes (its confirms and deletes) first."""
        reporter = asyncio.create_task(self._report_forever())
        backoff = 0.5
        try:
            while not stop.is_set():
                if self.blocked:  # an alarm on the broker: rows wait where they are, unclaimed
                    await self._while_blocked(stop)
                    continue
                try:
                    moved = await self.step()
                except Exception as exc:  # broker or database away: wait, then try again
                    self._troubled(exc)
                    if not self.blocked:
                        await _sleep_unless(stop, backoff)
                        backoff = min(BACKOFF_MAX, backoff * 2)
                    continue
                backoff = 0.5
                self._recovered()
                if moved == 0:
                    await self._idle(stop)
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            self.metrics.relay_ready.set(0)
            await self.publisher.close()

    async def step(self) -> int:
        """Claim, publish and settle one batch; returns how many rows it claimed."""
        if not self.publisher.connected:
            if self._connected_once:  # the robust connection is reconnecting by itself
                raise BrokerUnavailable("the broker connection is down; reconnecting")
            await self.publisher.connect()
            self._connected_once = True
        claim = await _outbox(self.outbox.claim(self.batch))
        self._outbox_ok = True
        if not claim.rows:
            await _outbox(claim.abandon())
            return 0
        try:
            done, aside, failed = await self._publish(claim.rows)
        except BaseException:
            await _outbox(claim.abandon())
            raise
        await _outbox(claim.finish(done, aside))
        for seq, reason in aside:
            log.error("outbox row %s set aside: %s", seq, reason)
        if failed:  # the rest waits for the next try; confirmed rows are gone already
            raise failed[0]
        return len(claim.rows)

    async def _publish(
        self, rows: Sequence[Row]
    ) -> tuple[list[int], list[tuple[int, str]], list[BaseException]]:
        aside: list[tuple[int, str]] = []
        events: list[tuple[int, Event]] = []
        for row in rows:
            try:
                events.append((row.seq, self._event(row)))
            except (InvalidEvent, UnknownEventType) as exc:
                aside.append((row.seq, f"not an event: {exc}"))
        results = await self._send_all([e for _, e in events])
        done: list[int] = []
        failed: list[BaseException] = []
        for (seq, event), result in zip(events, results, strict=True):
            if result is None:
                done.append(seq)
                self._count(event.type)
            elif isinstance(result, UnroutableError):
                aside.append((seq, f"unroutable: {result}"))
            else:
                failed.append(result)
        return done, aside, failed

    async def _send_all(self, events: list[Event]) -> list[Exception | None]:
        """Publish *events* in order, up to `window` unconfirmed; each one's error, or None.

        The publishes are a batch's (`send(timer=False)`: one write per loop turn, no timer per
        event, as `publish_many`), so the deadline is the window's: when no confirm came for
        `deadline` seconds while the broker blocks nothing, the unconfirmed ones are given up
        (PublishTimeout) and their rows wait for the next step. A block is waited out.
        """
        deadline = self.publisher.deadline

        async def one(i: int) -> None:  # the row's trace goes on (the publish span's parent)
            event = events[i]
            await self.publisher.send(event, parent=event.traceparent, timer=False)

        def blocked() -> bool:
            flow = self.publisher.flow
            return flow is not None and flow.blocked

        window = Window(self.window, one, len(events))
        await window.watched(deadline, paused=blocked)
        timeout = PublishTimeout(f"no confirm from the broker for {deadline:.0f}s")
        return [window.errors.get(i) if window.finished(i) else timeout for i in range(len(events))]

    def _event(self, row: Row) -> Event:
        """The event a `Publisher` would have sent for *row*: same id, source, time, ids."""
        if not row.id.strip():
            raise InvalidEvent("the row's id is empty")
        data = decode_body(row.data.encode())
        self.publisher.check(row.type, data)
        return Event(
            type=row.type, data=data, id=row.id, source=row.source, time=row.created_at,
            correlation_id=row.correlation_id, causation_id=row.causation_id,
            traceparent=row.traceparent or new_traceparent(),
        )  # fmt: skip

    def _count(self, event_type: str) -> None:
        child = self._counters.get(event_type)
        if child is None:
            child = self._counters[event_type] = self.metrics.relay_published.labels(event_type)
        child.inc()

    async def _while_blocked(self, stop: asyncio.Event) -> None:
        """Until the broker unblocks publishing (or *stop*): said once, no claims meanwhile."""
        self._troubled(None)
        flow = self.publisher.flow
        if flow is not None:
            await _until(stop, flow.wait())

    async def _idle(self, stop: asyncio.Event) -> None:
        """Until rows may have arrived (NOTIFY or a poll), or until *stop*."""
        await _until(stop, self.outbox.wait(self.idle))

    async def _report_forever(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # the step loop reports outages
                status = await self.outbox.status(sample=0)
                self.metrics.outbox_pending.set(status.pending)
                self.metrics.outbox_oldest_age.set(status.oldest_age_seconds)
                self.metrics.outbox_set_aside.set(status.set_aside)
            self.metrics.relay_ready.set(1 if self.ready else 0)
            await asyncio.sleep(REPORT_EVERY)

    def _troubled(self, exc: BaseException | None) -> None:
        """Say once what keeps rows waiting (*exc*, or the broker's block, which outranks the
        PublishTimeout it causes, so a long alarm is one line, not one per step)."""
        what = f"broker blocked publishing: {self.blocked}" if self.blocked else ""
        what = what or f"{type(exc).__name__}: {exc}"
        self._outbox_ok = self._outbox_ok and not (exc and _is_outbox_error(exc))
        if what != self._trouble:
            log.warning("relay cannot move rows now (%s); rows wait in the outbox", what)
            self._trouble = what
        self.metrics.relay_ready.set(0)

    def _recovered(self) -> None:
        if self._trouble is not None:
            log.info("relay moving rows again")
            self._trouble = None
        self.metrics.relay_ready.set(1 if self.ready else 0)


def _is_outbox_error(exc: BaseException) -> bool:
    return isinstance(exc, DatabaseUnavailable)


async def _outbox(call: Coroutine[Any, Any, T]) -> T:
    """*call* to the outbox; whatever the driver raises (a refused connection, a lost one, a
    PostgreSQL error) is `DatabaseUnavailable`: rows wait, and `/readyz` says why."""
    try:
        return await call
    except (BusError, asyncio.CancelledError):
        raise
    except Exception as exc:
        raise DatabaseUnavailable(f"the outbox: {type(exc).__name__}: {exc}") from exc


async def _open_when_ready(url: str, stop: asyncio.Event) -> OutboxStore | None:
    """The outbox, once its database answers and `bus_outbox` exists (a relay may start before
    the migration or the database): says why it waits, once; None if stopped meanwhile."""
    from bus.outbox import open_outbox

    said = ""
    while not stop.is_set():
        try:
            return await open_outbox(url)
        except (OutboxMissing, DatabaseUnavailable) as exc:  # a wrong URL is not waited on
            if str(exc) != said:
                log.warning("relay waiting: %s", exc)
                said = str(exc)
        await _sleep_unless(stop, 2.0)
    return None


async def _until(stop: asyncio.Event, awaitable: Coroutine[Any, Any, Any]) -> None:
    """Until *awaitable* is done or *stop* is set, whichever comes first (the other is
    cancelled; what *awaitable* raised is dropped: the caller only waits on it)."""
    waiter = asyncio.create_task(awaitable)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    for task in (waiter, stopper):
        task.cancel()
    await asyncio.gather(waiter, stopper, return_exceptions=True)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def serve(
    url: str,
    outbox_url: str,
    topology: Topology,
    *,
    metrics_port: int | None = None,
    grace: float = 25.0,
    batch: int = BATCH,
    stop: asyncio.Event | None = None,
    reconnect_interval: float = DEFAULT_RECONNECT_INTERVAL,
) -> None:
    """`bus relay`: relay until SIGTERM/SIGINT (or *stop*), finishing the step in progress
    within *grace* seconds. Serves /metrics, /healthz and /readyz on *metrics_port*."""
    from bus.ops.health import HealthServer

    stop = stop_on_signals(stop)
    loop = asyncio.get_running_loop()
    metrics = Metrics.default()
    running: list[Relay] = []  # the relay, once the outbox is there: /readyz follows it
    http = None
    if metrics_port is not None:
        ready = lambda: bool(running) and running[0].ready  # noqa: E731
        why = lambda: running[0].why_not_ready() if running else "the outbox is not open yet"  # noqa: E731
        http = HealthServer(metrics_port, metrics.registry, loop, ready, why_not=why).start()
    try:
        outbox = await _open_when_ready(outbox_url, stop)
        if outbox is None:
            return
        relay = Relay(
            outbox, topology, url, metrics=metrics, batch=batch,
            reconnect_interval=reconnect_interval,
        )  # fmt: skip
        running.append(relay)
        log.info("relay %s -> %s (%s loop)", redact(outbox_url), redact(url), name_of())
        task = asyncio.create_task(relay.run(stop))
        try:
            await stop.wait()
            log.info("relay stopping: finishing the batch in flight (grace %.0fs)", grace)
            try:
                await asyncio.wait_for(asyncio.shield(task), grace)
            except TimeoutError:
                log.warning("relay cut off after %.0fs: unconfirmed rows wait in the outbox", grace)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await outbox.close()
    finally:
        if http is not None:
            http.close()
    log.info("relay stopped")
