"""Keeps the embedded subscriber going without ever holding the API back.

The broker may be down when the API starts, or the `orders` queue not yet declared (`bus
topology apply` not run): the API starts and answers anyway, while this task retries the
subscriber's start with capped, jittered backoff. Once started, aio-pika's robust connection
reconnects by itself and the runtime consumes again; this task only watches and reports. It
logs one line per change of state, never one per attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from enum import StrEnum

from bus.consume.runtime import Runtime
from bus.errors import BusError

log = logging.getLogger(__name__)

FIRST_DELAY = 0.5
MAX_DELAY = 30.0
WATCH_INTERVAL = 1.0


class Phase(StrEnum):
    STARTING = "starting"
    RETRYING = "retrying"  # the last start failed; another comes after a backoff
    CONSUMING = "consuming"
    DISCONNECTED = "disconnected"  # started, the connection is being restored
    STOPPED = "stopped"


def backoff(
    attempt: int,
    *,
    first: float = FIRST_DELAY,
    cap: float = MAX_DELAY,
    jitter: Callable[[], float] = random.random,
) -> float:
    """Seconds before start attempt *attempt* + 1: doubling from *first* up to *cap*, each
    scaled by 0.5 to 1.0 so replicas that lost the broker together do not return in step."""
    base = min(cap, first * 2.0 ** max(0, attempt - 1))
    return base * (0.5 + jitter() / 2)


def reason(exc: BaseException) -> str:
    """One line for the log. The bus's own errors already redact URLs and say what to do."""
    if isinstance(exc, BusError):
        return str(exc).splitlines()[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Supervisor:
    """Starts the runtime *make* returns, retrying until it consumes; `stop()` drains it."""

    def __init__(
        self,
        make: Callable[[], Awaitable[Runtime]],
        *,
        name: str = "orders",
        first_delay: float = FIRST_DELAY,
        max_delay: float = MAX_DELAY,
        watch_interval: float = WATCH_INTERVAL,
    ) -> None:
        self._make = make
        self.name = name
        self._first, self._cap, self._watch = first_delay, max_delay, watch_interval
        self.phase = Phase.STOPPED
        self.detail = ""
        self.attempts = 0
        self.runtime: Runtime | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """Started, connected and consuming."""
        return self.runtime is not None and self.runtime.ready

    def start(self) -> None:
        """Begin in the background: returns at once."""
        self._task = asyncio.create_task(self._run(), name=f"supervise-{self.name}")

    async def stop(self, grace: float) -> None:
        """Stop retrying; a started runtime drains its in-flight handlers within *grace* s."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.runtime is not None:
            await self.runtime.stop(grace)
            self.runtime = None
        self._set(Phase.STOPPED)

    async def _run(self) -> None:
        self._set(Phase.STARTING)
        runtime = await self._start_until_consuming()
        self.runtime = runtime
        self._set(Phase.CONSUMING)
        while True:
            await asyncio.sleep(self._watch)
            if runtime.ready:
                self._set(Phase.CONSUMING)
            else:
                self._set(Phase.DISCONNECTED, "the connection is being restored")

    async def _start_until_consuming(self) -> Runtime:
        while True:
            self.attempts += 1
            runtime: Runtime | None = None
            try:
                runtime = await self._make()
                await runtime.start()
                return runtime
            except asyncio.CancelledError:
                if runtime is not None:
                    await _quietly_stop(runtime)
                raise
            except Exception as exc:  # broker down, queue missing, store down: all retried
                if runtime is not None:
                    await _quietly_stop(runtime)
                delay = backoff(self.attempts, first=self._first, cap=self._cap)
                self._set(Phase.RETRYING, reason(exc))
                await asyncio.sleep(delay)

    def _set(self, phase: Phase, detail: str = "") -> None:
        if (phase, detail) == (self.phase, self.detail):
            return
        self.phase, self.detail = phase, detail
        if phase is Phase.RETRYING:
            log.warning("subscriber %s not consuming: %s; retrying with backoff (up to %.0fs)",
                        self.name, detail, self._cap, extra={"subscriber": self.name})  # fmt: skip
        elif phase is Phase.DISCONNECTED:
            log.warning("subscriber %s disconnected: %s", self.name, detail,
                        extra={"subscriber": self.name})  # fmt: skip
        else:
            log.info("subscriber %s %s", self.name, phase.value, extra={"subscriber": self.name})


async def _quietly_stop(runtime: Runtime) -> None:
    """Close what a failed start opened; it may have opened nothing."""
    try:
        await runtime.stop(1.0)  # its idle event is set: returns at once
    except Exception:
        log.debug("cleaning up a failed start", exc_info=True)
