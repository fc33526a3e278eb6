"""N consumer processes of one subscriber under one parent: `bus run NAME --processes N`.

A subscriber's handlers run on one core per process. The parent starts N children, each an
ordinary `bus run NAME` consuming the same queue (the broker spreads deliveries between their
consumers), and stays small itself:

- one `/metrics` for all: the children write their metrics to files in a directory the parent
  owns (prometheus-client's multiprocess mode) and the parent serves the sum;
- `/readyz` answers ready only while every child is consuming (each keeps a ready flag file
  while it is), and `bus_ready` counts the consuming children;
- SIGTERM (or SIGINT) is passed on to every child, which drains as one process does; a child
  still running after the grace period (and a little more) is killed;
- a child that dies is started again, after a pause that grows while it keeps dying young, and
  the parent logs why it ended (its exit code or the signal). A child that exits 2 (a
  configuration error, the same for every child) stops them all instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from bus.errors import ConfigError
from bus.loop import name_of
from bus.metrics import Metrics
from bus.settings import Settings
from bus.signals import stop_on_signals
from bus.topology.model import Subscriber

log = logging.getLogger(__name__)

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
FIRST_PAUSE = 0.5  # before restarting a child that died young; doubles up to MAX_PAUSE
MAX_PAUSE = 10.0
YOUNG = 10.0  # a child that ran longer than this starts again at once
# what the parent serves of its own metrics; the rest comes from the children's files
PARENT_METRICS = frozenset(
    {"bus_ready", "bus_queue_messages", "bus_dlq_oldest_message_age_seconds"}
)


def why_it_ended(returncode: int) -> str:
    """A child's end in words: `exit code 1`, `killed by SIGKILL`."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def next_pause(previous: float, lived: float) -> float:
    """How long to wait before restarting a child that lived *lived* seconds."""
    if lived >= YOUNG:
        return 0.0
    return min(MAX_PAUSE, max(FIRST_PAUSE, previous * 2))


@dataclass
class Child:
    """One consumer process: its slot, its ready flag, the process running in it now."""

    index: int
    ready_file: Path
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    pause: float = 0.0
    restarts: int = 0
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def ready(self) -> bool:
        return self.running and self.ready_file.exists()


class Supervisor:
    """Starts, watches and stops the children of `bus run NAME --processes N`."""

    def __init__(
        self,
        name: str,
        processes: int,
        command: list[str],
        env: Mapping[str, str],
        workdir: Path,
        grace: float,
    ) -> None:
        self.name = name
        self.command = command
        self.env = dict(env)
        self.grace = grace
        self.children = [Child(i + 1, workdir / f"ready-{i + 1}") for i in range(processes)]
        self.stopping = False
        self.failed: str | None = None  # why the children were all stopped (a config error)

    @property
    def ready(self) -> bool:
        return not self.stopping and all(c.ready for c in self.children)

    def ready_count(self) -> int:
        return sum(c.ready for c in self.children)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep every child running until *stop* (or a configuration error), then drain all."""
        watchers = [asyncio.create_task(self._keep(c, stop)) for c in self.children]
        try:
            await stop.wait()
        finally:
            self.stopping = True
            await self._stop_all()
            for w in watchers:
                w.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        if self.failed is not None:
            raise ConfigError(self.failed)

    async def _keep(self, child: Child, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._start(child)
            assert child.proc is not None
            code = await child.proc.wait()
            child.ended.set()
            child.ready_file.unlink(missing_ok=True)
            if self.stopping or stop.is_set():
                return
            lived = time.monotonic() - child.started
            pid = child.proc.pid
            if code == 2:
                self.failed = (
                    f"process {child.index} of {self.name} (pid {pid}) exited with code 2 "
                    "(a configuration error): stopping all"
                )
                log.error("%s", self.failed, extra={"subscriber": self.name})
                stop.set()
                return
            child.pause = next_pause(child.pause, lived)
            log.warning(
                "process %d of %s (pid %d) ended after %.1fs: %s; restarting%s",
                child.index, self.name, pid, lived, why_it_ended(code),
                f" in {child.pause:.1f}s" if child.pause else "", extra={"subscriber": self.name},
            )  # fmt: skip
            if child.pause:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), child.pause)
            child.restarts += 1

    async def _start(self, child: Child) -> None:
        child.ready_file.unlink(missing_ok=True)
        env = {**self.env, "BUS_PROCESS_INDEX": str(child.index)}
        child.ended = asyncio.Event()
        child.proc = await asyncio.create_subprocess_exec(
            *self.command, "--ready-file", str(child.ready_file), env=env
        )
        child.started = time.monotonic()
        log.info(
            "process %d of %s started (pid %d)", child.index, self.name, child.proc.pid,
            extra={"subscriber": self.name},
        )  # fmt: skip

    async def _stop_all(self) -> None:
        running = [c for c in self.children if c.running]
        for c in running:
            assert c.proc is not None
            with contextlib.suppress(ProcessLookupError):
                c.proc.send_signal(signal.SIGTERM)
        # the children drain within their grace period; give them a little more to exit
        deadline = self.grace + 5.0
        waits = [asyncio.create_task(c.proc.wait()) for c in running if c.proc is not None]
        if not waits:
            return
        _, late = await asyncio.wait(waits, timeout=deadline)
        for c in running:
            if c.running and c.proc is not None:
                log.warning("process %d of %s did not stop: killing it", c.index, self.name)
                with contextlib.suppress(ProcessLookupError):
                    c.proc.kill()
        if late:
            await asyncio.wait(late, timeout=5.0)


class _Only:
    """The families of *registry* named in *names*: a collector for the parent's own metrics."""

    def __init__(self, registry: CollectorRegistry, names: Iterable[str]) -> None:
        self._registry = registry
        self._names = frozenset(names)

    def collect(self) -> Iterable[Metric]:
        return [m for m in self._registry.collect() if m.name in self._names]


def served_registry(multiproc_dir: Path, own: Metrics) -> CollectorRegistry:
    """What the parent's `/metrics` serves: the children's metrics summed, and its own."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(multiproc_dir))  # type: ignore[no-untyped-call]
    registry.register(_Only(own.registry, PARENT_METRICS))
    return registry


def child_env(
    settings: Settings, grace: float, multiproc_dir: Path, base: Mapping[str, str]
) -> dict[str, str]:
    """A child's environment: the parent's, with its resolved settings and the metrics dir."""
    env = {k: v for k, v in base.items() if k != "BUS_METRICS_PORT"}  # only the parent serves
    env.update(
        BUS_URL=settings.url,
        BUS_TOPOLOGY=settings.topology,
        BUS_CONSUMER_TIMEOUT=settings.consumer_timeout,
        BUS_GRACE_PERIOD=str(grace),
        BUS_LOG_FORMAT=settings.log_format,
        BUS_LOG_LEVEL=settings.log_level,
        **{MULTIPROC_DIR: str(multiproc_dir)},
    )
    if settings.store_url:
        env["BUS_STORE_URL"] = settings.store_url
    return env


async def supervise(
    sub: Subscriber,
    settings: Settings,
    processes: int,
    *,
    metrics_port: int | None,
    grace: float,
    stop: asyncio.Event | None = None,
) -> None:
    """Run *processes* children of `bus run NAME` until SIGTERM/SIGINT (or *stop*), then drain."""
    from bus.ops.gauges import QueueGauges
    from bus.ops.health import HealthServer

    name = sub.name
    stop = stop_on_signals(stop)
    loop = asyncio.get_running_loop()
    workdir = Path(tempfile.mkdtemp(prefix=f"bus-{name}-"))
    metrics_dir = workdir / "metrics"
    metrics_dir.mkdir()
    command = [sys.executable, "-m", "bus.cli", "run", name, "--processes", "1"]
    env = child_env(settings, grace, metrics_dir, os.environ)
    sup = Supervisor(name, processes, command, env, workdir, grace)
    own = Metrics(CollectorRegistry(auto_describe=True))
    own.ready.labels(name).set_function(lambda: float(sup.ready_count()))
    http = None
    gauges = None
    try:
        if metrics_port is not None:
            registry = served_registry(metrics_dir, own)
            http = HealthServer(metrics_port, registry, loop, lambda: sup.ready).start()
            gauges = await QueueGauges(
                sub, settings.url, own, interval=settings.gauge_interval
            ).start()
        log.info(
            "subscriber %s: %d processes under pid %d (%s loop)", name, processes, os.getpid(),
            name_of(), extra={"subscriber": name},
        )  # fmt: skip
        await sup.run(stop)
        log.info("stopped %s: %d processes", name, processes)
    finally:
        if gauges is not None:
            await gauges.stop()
        if http is not None:
            http.close()
        shutil.rmtree(workdir, ignore_errors=True)


async def flag_ready(path: Path, ready: Callable[[], bool], every: float = 0.2) -> None:
    """A child's side: keep *path* present while *ready()*, absent otherwise (until cancelled)."""
    flagged = False
    try:
        while True:
            if ready() != flagged:
                flagged = not flagged
                _flag(path, flagged)
            await asyncio.sleep(every)
    finally:
        _flag(path, False)


def _flag(path: Path, on: bool) -> None:
    """A file in the parent's temp dir: as quick as any other step of the loop."""
    if on:
        path.touch()
    else:
        path.unlink(missing_ok=True)
