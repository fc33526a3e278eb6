"""What a durable saga host runs beside its consumer: the relay of the step's outbox rows
(the store's own `bus_outbox`, relayed by the subscriber itself), the sender of committed
timeouts into the broker's delay levels, the instance gauges, and the pruning of completed
instances after `saga_retention`.

A timeout row is sent, then marked sent: a crash in between sends it again with the same id,
which the subscriber's processed table absorbs. Replicas may all send: the same id again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

from bus.metrics import Metrics
from bus.outbox import open_outbox
from bus.outbox.base import OutboxStore
from bus.outbox.relay import Relay
from bus.sagas.host import SagaHost, Sends
from bus.topology.model import Topology

log = logging.getLogger(__name__)

BATCH = 100
GAUGE_EVERY = 5.0
PRUNE_EVERY = 3600.0


class Effects:
    """Background tasks of a durable host: `await start()`, later `await stop()`."""

    def __init__(
        self,
        host: SagaHost,
        *,
        outbox_url: str,
        topology: Topology,
        url: str,
        sends: Sends,
        metrics: Metrics,
        retention: float,
        reconnect_interval: float = 1.0,
    ) -> None:
        self.host = host
        self.outbox_url = outbox_url
        self.topology = topology
        self.url = url
        self.sends = sends
        self.metrics = metrics
        self.retention = retention
        self.reconnect_interval = reconnect_interval
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._outbox: OutboxStore | None = None

    async def start(self) -> None:
        self._outbox = await open_outbox(self.outbox_url)
        relay = Relay(
            self._outbox, self.topology, self.url, metrics=self.metrics,
            reconnect_interval=self.reconnect_interval,
        )  # fmt: skip
        for job in (relay.run(self._stop), self._send_timeouts(), self._gauges(), self._prune()):
            self._tasks.append(asyncio.create_task(_guarded(job)))

    async def stop(self, grace: float = 5.0) -> None:
        """Let the relay finish its batch in flight (rows left wait for the next start)."""
        self._stop.set()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._outbox is not None:
            await self._outbox.close()

    async def _send_timeouts(self) -> None:
        store, said = self.host.store, ""
        while not self._stop.is_set():
            try:
                rows = await store.unsent_timeouts(BATCH)
                for r in rows:
                    left = r.due_at - time.time()  # under a second: at once
                    await self.sends.publish(
                        r.type, r.data, id=r.id, correlation_id=r.correlation_id,
                        causation_id=r.causation_id, delay=left if left >= 1 else None,
                    )  # fmt: skip
                if rows:
                    await store.mark_sent([r.id for r in rows], time.time())
                said = ""
            except Exception as exc:
                if str(exc) != said:
                    log.warning("saga timeouts wait: %s: %s", type(exc).__name__, exc)
                    said = str(exc)
                rows = []
                await self._pause(1.0)
                continue
            if len(rows) < BATCH:
                await self._pause(1.0, self.host.committed)
                self.host.committed.clear()

    async def _gauges(self) -> None:
        seen: set[tuple[str, str]] = set()
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                counts = await self.host.store.counts(self.host.subscriber)
                for saga, status in seen - set(counts):
                    self.metrics.saga_instances.labels(self.host.subscriber, saga, status).set(0)
                for (saga, status), n in counts.items():
                    self.metrics.saga_instances.labels(self.host.subscriber, saga, status).set(n)
                seen |= set(counts)
            await self._pause(GAUGE_EVERY)

    async def _prune(self) -> None:
        while not self._stop.is_set():
            try:
                removed = await self.host.store.prune(self.retention, time.time())
                if removed:
                    log.info("removed %d completed saga instances", removed)
            except Exception:
                log.warning("pruning completed saga instances failed", exc_info=True)
            await self._pause(PRUNE_EVERY)

    async def _pause(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        waits = [asyncio.ensure_future(self._stop.wait())]
        if wake is not None:
            waits.append(asyncio.ensure_future(wake.wait()))
        await asyncio.wait(waits, timeout=seconds, return_when="FIRST_COMPLETED")
        for w in waits:
            w.cancel()


async def _guarded(job: Coroutine[Any, Any, None]) -> None:
    try:
        await job
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("a saga background task stopped")
