"""Flow control: the broker's `connection.blocked` and `connection.unblocked`, seen and said.

RabbitMQ blocks a publishing connection while a memory or disk alarm is in effect: it stops
reading from that connection's socket, so publishes stall rather than fail, and a consuming
connection goes on delivering. aiormq advertises the `connection.blocked` capability but tells
nobody when it happens (its own WARNING is silenced by `bus.logs`), so a blocked publisher
would look hung. A `Flow` follows one robust connection across its reconnects and says so:

- one WARNING when the broker blocks it, naming the node (redacted) and the broker's reason
  (``low on memory``, ``low on disk space``), one INFO when it is unblocked, with how long;
- the gauge `bus_broker_blocked` of every `Metrics` it reports to (`report_to`);
- `wait()`, which a publisher awaits instead of writing into a socket the broker does not read,
  and `describe()`, the words for a `PublishTimeout` or a `/readyz` that the block caused.

A new connection starts unblocked (the broker blocks it again on its next publish if the alarm
still holds), so a reconnect ends the block that the old connection was under.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

log = logging.getLogger(__name__)

# aiormq 7 handles both frames in these (name-mangled) methods of its Connection, which its
# reader looks up on the instance for every frame: the one place to hear of them.
# tests/unit/test_flow.py fails if an aiormq upgrade renames them.
BLOCKED_HANDLER = "_Connection__handle_connection_blocked"
UNBLOCKED_HANDLER = "_Connection__handle_connection_unblocked"


class GaugeLike(Protocol):
    def inc(self, amount: float = 1) -> None: ...
    def dec(self, amount: float = 1) -> None: ...


class Flow:
    """Whether the broker blocks publishing on one (robust) connection, and since when."""

    def __init__(self, name: str = "bus") -> None:
        self.name = name
        self.node = ""
        self.reason: str | None = None
        self.blocks = 0  # how many times the broker blocked this connection
        self._since = 0.0
        self._open: asyncio.Event | None = None  # made on first wait(), in the caller's loop
        self._gauges: list[GaugeLike] = []
        self._windows: dict[asyncio.Timeout, float] = {}  # deadlines paused while blocked

    @property
    def blocked(self) -> bool:
        """The broker blocks publishing on this connection now."""
        return self.reason is not None

    def blocked_for(self) -> float:
        """Seconds the current block has lasted (0 when not blocked)."""
        return time.monotonic() - self._since if self.blocked else 0.0

    def describe(self) -> str:
        """``broker blocked publishing (low on memory) for 30 s``, or "" when not blocked."""
        if self.reason is None:
            return ""
        return f"broker blocked publishing ({self.reason}) for {self.blocked_for():.0f} s"

    def report_to(self, gauge: GaugeLike) -> None:
        """Count this connection's block in *gauge* (1 while blocked); once per gauge."""
        if any(g is gauge for g in self._gauges):
            return
        self._gauges.append(gauge)
        if self.blocked:
            gauge.inc()

    async def wait(self, timeout: float | None = None) -> None:
        """Until publishing is unblocked; TimeoutError after *timeout* seconds of block."""
        if not self.blocked:
            return
        if self._open is None:
            self._open = asyncio.Event()
        await asyncio.wait_for(self._open.wait(), timeout)

    @contextlib.asynccontextmanager
    async def deadline(self, timeout: float | None) -> AsyncIterator[None]:
        """TimeoutError after *timeout* seconds, a clock that stops while the broker blocks
        publishing and starts afresh when it unblocks: a confirm the broker cannot send while
        it reads nothing from us is not a lost one (the relay waits out an alarm this way
        instead of publishing its rows a second time)."""
        if timeout is None:
            yield
            return
        when = None if self.blocked else asyncio.get_running_loop().time() + timeout
        async with asyncio.timeout_at(when) as window:
            self._windows[window] = timeout
            try:
                yield
            finally:
                del self._windows[window]

    def _pause(self, blocked: bool) -> None:
        if not self._windows:
            return
        now = asyncio.get_running_loop().time()
        for window, timeout in list(self._windows.items()):
            with contextlib.suppress(RuntimeError):  # already expiring: its TimeoutError stands
                window.reschedule(None if blocked else now + timeout)

    # -- following the connection ----------------------------------------------------------

    def attach(self, connection: Any, node: str) -> None:
        """Follow *connection* (an `aiormq.Connection`, new after each reconnect) to *node*."""
        if self.blocked:
            self._unblocked(how="its connection was replaced")
        self.node = node
        on_blocked = getattr(connection, BLOCKED_HANDLER, None)
        on_unblocked = getattr(connection, UNBLOCKED_HANDLER, None)
        if on_blocked is None or on_unblocked is None:
            log.warning(
                "this aiormq does not say when RabbitMQ blocks publishing: a blocked %s will "
                "look hung (bus.amqp.flow)",
                self.name,
            )
            return

        async def blocked(frame: Any) -> None:
            await on_blocked(frame)
            self._blocked(str(getattr(frame, "reason", "") or "no reason given"))

        async def unblocked(frame: Any) -> None:
            await on_unblocked(frame)
            self._unblocked()

        setattr(connection, BLOCKED_HANDLER, blocked)
        setattr(connection, UNBLOCKED_HANDLER, unblocked)

    def _blocked(self, reason: str) -> None:
        if self.blocked:
            self.reason = reason
            return
        self.reason, self._since = reason, time.monotonic()
        self.blocks += 1
        if self._open is not None:
            self._open.clear()
        for gauge in self._gauges:
            gauge.inc()
        self._pause(True)
        log.warning(
            "RabbitMQ at %s blocked publishing on connection %s: %s; publishes wait until the "
            "broker's alarm clears",
            self.node, self.name, reason,
        )  # fmt: skip

    def _unblocked(self, how: str = "the broker unblocked it") -> None:
        if not self.blocked:
            return
        lasted = self.blocked_for()
        self.reason = None
        if self._open is not None:
            self._open.set()
        for gauge in self._gauges:
            gauge.dec()
        self._pause(False)
        log.info(
            "RabbitMQ at %s unblocked publishing on connection %s after %.1f s (%s)",
            self.node, self.name, lasted, how,
        )  # fmt: skip


def flow_of(connection: object) -> Flow | None:
    """The `Flow` of a connection made by `bus.amqp.connection.connect`, else None."""
    flow = getattr(connection, "flow", None)
    return flow if isinstance(flow, Flow) else None
