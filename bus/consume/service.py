"""Run one subscriber as a service: `bus run NAME` and `python -m subscribers.NAME`."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from pathlib import Path

from bus.consume.handlers import import_router
from bus.consume.handoff import HandOff
from bus.consume.processes import flag_ready, supervise
from bus.consume.runtime import HandOffFactory, Runtime, refuse_timeout_at_or_over
from bus.errors import BusError, ConfigError, NotApplied
from bus.loop import run as run_service
from bus.metrics import Metrics
from bus.ops.gauges import QueueGauges
from bus.ops.health import HealthServer
from bus.settings import DEFAULT_GRACE_PERIOD, Settings
from bus.signals import stop_on_signals
from bus.stores import open_store
from bus.topology.model import load as load_topology

log = logging.getLogger(__name__)

# Kubernetes sends SIGTERM, waits terminationGracePeriodSeconds (30 by default), then SIGKILLs.
# Our drain must end before that: keep BUS_GRACE_PERIOD below the pod's grace period.
DEFAULT_GRACE = DEFAULT_GRACE_PERIOD


async def serve(
    name: str,
    settings: Settings,
    *,
    metrics_port: int | None = None,
    grace: float = DEFAULT_GRACE,
    stop: asyncio.Event | None = None,
    handoff: HandOffFactory = HandOff,
    processes: int | None = None,
    ready_file: Path | None = None,
) -> None:
    """Consume until SIGTERM/SIGINT (or *stop*), then drain within *grace* seconds.

    *processes* (default: the subscriber's `processes:`, else 1) above 1 runs that many
    consumer processes under this one (bus.consume.processes). *ready_file* is kept present
    while consuming: how such a child tells its parent. *handoff* builds the retry/DLQ
    hand-off (a seam for fault-injection tests)."""
    topology = load_topology(settings.topology)
    try:
        sub = topology.subscriber(name)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None
    consumer_timeout = settings.consumer_timeout_seconds
    refuse_timeout_at_or_over(sub, consumer_timeout)  # before anything connects: exit 2
    router = import_router(sub.handlers)
    processes = processes or sub.processes
    if processes > 1:
        await _require_queue(settings.url, sub.name, sub.queue)
        await supervise(sub, settings, processes, metrics_port=metrics_port, grace=grace, stop=stop)
        return
    lease = settings.claim_lease
    stop = stop_on_signals(stop)
    loop = asyncio.get_running_loop()
    metrics = Metrics.default()
    store = await open_store(settings.store_url)
    try:
        await _require_queue(settings.url, sub.name, sub.queue)
    except BaseException:
        await store.close()
        raise
    runtime = Runtime(
        topology, name, router, url=settings.url, store=store, metrics=metrics, lease=lease,
        handoff=handoff, consumer_timeout=consumer_timeout,
        reconnect_interval=settings.reconnect_interval, saga_retention=settings.saga_retention,
    )  # fmt: skip
    http = None
    gauges = None
    # What start-up made (modules, validators, the topology) lives as long as the process:
    # take it out of the collector's sight, or every full collection walks it again (measured:
    # a 16 ms pause, the worst publish->handler latency of 5,000). Before connecting, so that
    # a connection replaced after a reconnect can still be collected.
    gc.collect()
    gc.freeze()
    pruner: asyncio.Task[None] | None = None
    try:
        await runtime.start()
        if metrics_port is not None:
            http = HealthServer(metrics_port, metrics.registry, loop, lambda: runtime.ready).start()
            gauges = await QueueGauges(
                sub, settings.url, metrics, interval=settings.gauge_interval
            ).start()
        pruner = asyncio.create_task(_prune_forever(store, settings.store_retention))
        flag = None
        if ready_file is not None:
            flag = asyncio.create_task(flag_ready(ready_file, lambda: runtime.ready))
        await stop.wait()
        if flag is not None:
            flag.cancel()  # draining: no longer ready
        log.info("stopping %s: draining in-flight handlers (grace %.0fs)", name, grace)
    finally:
        if pruner is not None:
            pruner.cancel()
        # whatever ended the run (stop, a failed start, a port in use, a cancellation): the
        # consumers are cancelled and in-flight handlers drained before the store closes
        drained = await runtime.stop(grace)
        for hook in router.shutdown_hooks:
            try:
                await hook()
            except Exception:  # one failing hook must not block the others
                log.warning("shutdown hook %s failed", hook.__qualname__, exc_info=True)
        log.info("stopped %s%s", name, "" if drained else " (some handlers were cut off)")
        if gauges is not None:
            await gauges.stop()
        if http is not None:
            http.close()
        await store.close()


async def _require_queue(url: str, name: str, queue: str) -> None:
    """Refuse to start, in one line, when `apply` has not made the subscriber's queue."""
    from bus.amqp.connection import connect_plain
    from bus.ops.status import queue_state

    conn = await connect_plain(url, f"run:{name}")
    try:
        exists = (await queue_state(conn, queue)).exists
    finally:
        await conn.close()
    if not exists:
        raise NotApplied(
            f"queue {queue!r} of subscriber {name!r} does not exist: run `bus topology apply` first"
        )


async def _prune_forever(store: object, retention: float, every: float = 3600.0) -> None:
    while True:
        try:
            removed = await store.prune(retention)  # type: ignore[attr-defined]
            if removed:
                log.info("pruned %d old idempotency records", removed)
        except Exception:
            log.warning("pruning the idempotency store failed", exc_info=True)
        await asyncio.sleep(every)


def main(name: str) -> None:
    """Entry point of `python -m subscribers.<name>`."""
    from bus.logs import configure

    try:
        settings = Settings.from_env()
        configure(settings.log_format, settings.log_level)
        run_service(
            serve(name, settings, metrics_port=settings.metrics_port, grace=settings.grace_period)
        )
    except BusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
