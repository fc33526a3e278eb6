"""Idempotency claims of one subscriber: claim with waiting, and one heartbeat for all.

A claim is a lease in the store. While handlers run, one background task renews every claim
this process holds every third of the lease, so a slow handler keeps its claim. A crashed
process's claim is taken over as soon as the store sees its owner gone (bus.stores.owner, the
PostgreSQL owner lock), else after one lease. `claim` returns BUSY only when another replica
held the id throughout the wait: the caller must then leave the message alone (bus.consume.dispatch
requeues it), never run the handler without the claim. A handler cut off mid-run (its channel
closed, so aiormq cancelled it) lets its claim go at once: the redelivery runs it. A batch item
cut off while its batch already runs keeps its claim until that run ends (`end_with`).

A store that fails (an outage) is retried with backoff for up to *patience* seconds while the
delivery stays in hand, unacked: giving it back to the queue instead would count as a delivery
on a quorum queue, and past the queue's delivery limit the broker parks a healthy event whose
handler never ran. The runtime sets the patience below the broker's `consumer_timeout`, which
would otherwise close the channel under the held deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from bus.stores.base import Claim, Store

log = logging.getLogger(__name__)

T = TypeVar("T")
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0


class Claims:
    def __init__(self, store: Store, subscriber: str, lease: float, patience: float = 0.0) -> None:
        """*patience*: seconds a failing store is retried before its error is raised."""
        self.store = store
        self.subscriber = subscriber
        self.lease = lease
        self.patience = patience
        self._held: dict[str, int] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._ending: set[asyncio.Task[None]] = set()  # claims ended after a cut-off (end_with)

    def start(self) -> None:
        self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer

    async def claim(self, event_id: str) -> Claim:
        """Claim the id; while another replica holds it, wait (up to a lease and a second) for
        it to finish, expire or be found dead. BUSY means it never let go: do not run."""
        deadline = None
        while True:
            claim = await self._patiently(
                "claim", event_id, lambda: self.store.claim(self.subscriber, event_id, self.lease)
            )
            if claim is Claim.CLAIMED:
                self._held[event_id] = self._held.get(event_id, 0) + 1
                return claim
            if claim is Claim.DONE:
                return claim
            if deadline is None:  # BUSY: another replica runs it right now
                deadline = time.monotonic() + self.lease + 1
            elif time.monotonic() > deadline:
                return claim
            await asyncio.sleep(0.1)

    def _drop(self, event_id: str) -> None:
        n = self._held.pop(event_id, 0) - 1
        if n > 0:
            self._held[event_id] = n

    async def complete(self, event_id: str) -> None:
        try:  # held (and renewed) until recorded: the handler ran, it must not run again
            await self._patiently(
                "complete", event_id, lambda: self.store.complete(self.subscriber, event_id)
            )
        finally:
            self._drop(event_id)

    async def release(self, event_id: str) -> None:
        try:
            await self._patiently(
                "release", event_id, lambda: self.store.release(self.subscriber, event_id)
            )
        finally:
            self._drop(event_id)

    async def _patiently(self, what: str, event_id: str, call: Callable[[], Awaitable[T]]) -> T:
        """*call*, retried with backoff while it raises, for up to `patience` seconds."""
        deadline = time.monotonic() + self.patience
        backoff, failures = FIRST_BACKOFF, 0
        while True:
            try:
                result = await call()
            except Exception as exc:
                if time.monotonic() + backoff > deadline:
                    raise
                if failures == 0:
                    log.warning("store %s of %s failed (%s: %s); holding the delivery and "
                                "retrying for up to %.0fs", what, event_id, type(exc).__name__,
                                exc, deadline - time.monotonic())  # fmt: skip
                failures += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            if failures:
                log.info("store %s of %s succeeded after %d failures", what, event_id, failures)
            return result

    def holds(self, event_id: str) -> bool:
        """Does a handler of this process hold the id's claim right now?"""
        return event_id in self._held

    async def let_go(self, event_id: str) -> None:
        """Release the claim of a handler that was cut off (cancelled): it is renewed no more at
        once, and the store's release finishes even if this is cancelled again. A store that
        fails here only leaves the lease to run out."""
        self._drop(event_id)
        try:
            await asyncio.shield(self.store.release(self.subscriber, event_id))
        except Exception:
            log.warning("could not release the claim on %s; it expires with its lease", event_id)

    def end_with(self, event_id: str, run: asyncio.Future[BaseException | None]) -> None:
        """Keep the claim (renewed) of a cut-off delivery whose handler runs on (its batch), and
        end it as *run* ends: completed when it returns None, released when it fails."""

        def ended(f: asyncio.Future[BaseException | None]) -> None:
            failed = f.cancelled() or f.result() is not None
            task = asyncio.get_running_loop().create_task(self._end(event_id, failed))
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)

        run.add_done_callback(ended)

    async def _end(self, event_id: str, failed: bool) -> None:
        try:
            await (self.release(event_id) if failed else self.complete(event_id))
        except Exception:
            log.warning("could not end the claim on %s; it expires with its lease", event_id)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            for event_id in list(self._held):
                try:
                    await self.store.renew(self.subscriber, event_id, self.lease)
                except Exception:  # a missed heartbeat only shortens the lease
                    log.warning("could not renew the claim on %s", event_id, exc_info=True)
