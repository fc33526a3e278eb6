"""Run one handler where it belongs, within its subscriber's limits and timeout.

| handler                     | runs in                                      | over `timeout`    |
|-----------------------------|----------------------------------------------|-------------------|
| `async def`                 | the event loop                               | cancelled         |
| plain `def`                 | a thread pool of `concurrency` threads       | left behind       |
| `def`, `executor="process"` | a pool of min(`concurrency`, CPUs) processes | process replaced  |

Each raises `bus.HandlerTimeout` over the timeout, which takes the retry ladder; a thread
cannot be stopped, so it runs on outside the pool and a fresh thread takes its slot. A timeout
counts from the handler's start, never while it waits for a thread or a process. Heartbeats,
acks and the other handlers go on meanwhile: nothing but `async def` handlers ever runs on
the loop. Pools start with the first handler that needs them (`start()` warms the process
pool) and `close()` waits for them.
"""

from __future__ import annotations

import asyncio
import functools
import os
from typing import Any

from bus.consume.context import Context, ProcessContext, SyncContext
from bus.consume.limits import Limits
from bus.consume.router import Executor, Handler
from bus.consume.threads import ThreadPool
from bus.consume.workers import ProcessPool
from bus.errors import HandlerTimeout
from bus.topology.model import Subscriber


class Runner:
    """`await run(handler, event, ctx)` for one subscriber; `plain` when dispatch may skip it."""

    def __init__(self, sub: Subscriber, *, limits: Limits | None = None) -> None:
        self.sub = sub
        self.preload: tuple[str, ...] = ()  # the process handlers' modules, from start()
        self.timeout = sub.timeout_ms / 1000 if sub.timeout_ms else None
        self.limits = limits
        # no limits, no timeout: dispatch awaits an `async def` handler itself (the hot path)
        self.plain = limits is None and self.timeout is None
        self._threads: ThreadPool | None = None
        self._processes: ProcessPool | None = None

    @classmethod
    def for_subscriber(cls, sub: Subscriber, **limit_options: Any) -> Runner:
        """The runner *sub* asks for: `Limits` only when it sets a rate or a concurrency
        below its prefetch. *limit_options* (clock, sleep) go to `Limits`."""
        concurrency = sub.concurrency if sub.concurrency < sub.prefetch else None
        if concurrency is None and sub.rate is None:
            return cls(sub)
        return cls(sub, limits=Limits(concurrency, sub.rate, **limit_options))

    @property
    def process_slots(self) -> int:
        return max(1, min(self.sub.concurrency, os.cpu_count() or 1))

    async def start(self, handlers: list[Handler], *, warm: bool = True) -> None:
        """Tell the process pool which modules its workers import first and, with *warm*,
        start one worker per slot now, when there are process handlers."""
        modules = {h.func.__module__ for h in handlers if h.executor is Executor.PROCESS}
        self.preload = tuple(sorted(modules))
        if modules and warm:
            await self._process_pool().warm()

    async def run(self, handler: Handler, event: Any, ctx: Context) -> None:
        """Run *handler*; raises what it raised, or `HandlerTimeout`."""
        if self.limits is None:
            await self._run(handler, event, ctx)
        else:
            async with self.limits:
                await self._run(handler, event, ctx)

    async def close(self, grace: float = 5.0) -> None:
        if self._processes is not None:
            await self._processes.close(grace)
        if self._threads is not None:
            self._threads.close()

    async def _run(self, handler: Handler, event: Any, ctx: Context) -> None:
        kind = handler.executor
        if kind is Executor.PROCESS:
            pool = self._process_pool()
            follow_ups = await pool.run(handler.func, event, ProcessContext(ctx), self.timeout)
            for event_type, data, follow_id, delay in follow_ups:
                await ctx.publish(event_type, data, id=follow_id, delay=delay)
            return
        if kind is Executor.THREAD:
            loop = asyncio.get_running_loop()
            call = functools.partial(handler.func, event, SyncContext(ctx, loop))
            overran = (
                f"{handler.name} ran over its timeout of {self.sub.timeout}; its thread runs on, "
                "its result ignored"
            )
            await self._thread_pool().run(call, self.timeout, overran)
            return
        await self._bounded(handler.func(event, ctx), handler, "it was cancelled")

    async def _bounded(self, work: Any, handler: Handler, what: str) -> None:
        if self.timeout is None:
            await work
            return
        try:
            async with asyncio.timeout(self.timeout) as scope:
                await work
        except TimeoutError:
            if not scope.expired():  # the handler's own TimeoutError: an ordinary failure
                raise
            raise HandlerTimeout(
                f"{handler.name} ran over its timeout of {self.sub.timeout}; {what}"
            ) from None

    def _thread_pool(self) -> ThreadPool:
        if self._threads is None:
            self._threads = ThreadPool(self.sub.concurrency, name=f"bus-{self.sub.name}")
        return self._threads

    def _process_pool(self) -> ProcessPool:
        if self._processes is None:
            self._processes = ProcessPool(
                self.process_slots, name=f"bus-{self.sub.name}", preload=self.preload
            )
        return self._processes
