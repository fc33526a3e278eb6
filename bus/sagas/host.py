"""The saga host of one subscriber: runs a step once per event, against the latest state.

For each event: load the instance by its key, decide (`bus.sagas.saga.decide`), run the step on
a copy of the state, then commit in one transaction the new state (the version it read must
still be the latest), the step's record, the event's processed mark, its outbox rows and its
timeouts. When another step of the instance committed first (another coroutine or replica),
the commit is a `Conflict`: the step runs again on the new state, unseen by the handler.

So a step's effects happen once: a crash before the commit leaves nothing (the redelivery runs
the step again from the old state), a crash after it leaves the processed mark (the
redelivery is a duplicate) and the rows, which the subscriber's relay publishes after
(`bus.sagas.effects`). A store that is not durable (`memory://`, TestBus) has its effects
sent right after the commit instead.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from bus.errors import NoSaga
from bus.metrics import Metrics
from bus.produce.publishes import Publishes
from bus.sagas.saga import COMPLETED, RUNNING, Check, Saga, SagaContext, Step, Verdict, decide
from bus.sagas.store import Conflict, SagaStore, Transition

log = logging.getLogger(__name__)

MAX_RERUNS = 200  # conflicts in a row before the event takes the retry ladder


Sends = Publishes  # `Publisher`, or TestBus's per-subscriber source


class SagaHost:
    def __init__(
        self,
        subscriber: str,
        sagas: Sequence[Saga[Any]],
        store: SagaStore,
        check: Check,
        *,
        sends: Sends | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """*check* refuses an undeclared event type or data failing its schema; *sends*
        publishes the effects of a store that is not durable."""
        self.subscriber = subscriber
        self.sagas = {s.name: s for s in sagas}
        self.store = store
        self.check = check
        self.sends = sends
        self.metrics = metrics
        self.clock = clock
        self.committed = asyncio.Event()  # set at each commit: wakes the timeout sender

    async def run(self, step: Step, event: Any, ctx: Any) -> None:
        """Run *step* for *event* (the router's handler for it, given the handler's ctx)."""
        saga = step.saga
        key = saga.key_of(event)
        started = time.perf_counter()
        try:
            for rerun in range(MAX_RERUNS + 1):
                if await self._once(step, event, ctx, key):
                    return
                self._conflict(saga)
                await asyncio.sleep(random.uniform(0, 0.002 * min(rerun + 1, 25)))
            raise RuntimeError(
                f"saga {saga.name} {key}: {MAX_RERUNS} conflicting commits in a row; retried later"
            )
        finally:
            if self.metrics is not None:
                self.metrics.saga_step_seconds.labels(self.subscriber, saga.name).observe(
                    time.perf_counter() - started
                )

    async def _once(self, step: Step, event: Any, ctx: Any, key: str) -> bool:
        """One try; False on a conflict."""
        saga = step.saga
        found = await self.store.load(self.subscriber, saga.name, key)
        verdict = decide(step, found.status if found else None)
        if verdict is Verdict.NO_SAGA:
            self._count(saga, "no-saga")
            raise NoSaga(
                f"no {saga.name!r} saga with key {key!r}, and {step.event_type} starts none"
            )
        if verdict is Verdict.IGNORE:
            self._count(saga, "ignored")
            why = "completed" if found and found.status == COMPLETED else "started already"
            ctx.log.info("saga %s %s is %s: %s %s ignored", saga.name, key, why, ctx.type, ctx.id)
            return True
        state = saga.new_state() if found is None else saga.load_state(found.state)
        sctx = SagaContext(saga.name, key, ctx, self.check, saga.key)
        await step.func(event, state, sctx)
        t = Transition(
            subscriber=self.subscriber, saga=saga.name, key=key, event_id=ctx.id,
            event_type=ctx.type, state=state.model_dump_json(),
            status=COMPLETED if sctx.completed else RUNNING,
            version=found.version if found else 0, at=self.clock(),
            correlation_id=ctx.correlation_id, source=self.subscriber,
            publishes=tuple(sctx.publishes), timeouts=tuple(sctx.timeouts),
        )  # fmt: skip
        try:
            await self.store.commit(t)
        except Conflict:
            return False
        self._count(saga, "ok")
        self.committed.set()
        if not self.store.durable:
            await self._send(t)
        return True

    async def _send(self, t: Transition) -> None:
        """The effects of a step in a store that keeps none (memory), after its commit."""
        assert self.sends is not None, "a store that is not durable needs `sends`"
        for o in t.publishes:
            await self.sends.publish(o.type, o.data, id=o.id, correlation_id=t.correlation_id,
                                     causation_id=t.event_id)  # fmt: skip
        for tm in t.timeouts:
            await self.sends.publish(tm.type, tm.data, id=tm.id, correlation_id=t.correlation_id,
                                     causation_id=t.event_id, delay=tm.seconds)  # fmt: skip

    def _count(self, saga: Saga[Any], outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.saga_steps.labels(self.subscriber, saga.name, outcome).inc()

    def _conflict(self, saga: Saga[Any]) -> None:
        if self.metrics is not None:
            self.metrics.saga_conflicts.labels(self.subscriber, saga.name).inc()

    async def instance(self, saga: str, key: str) -> tuple[str, Any] | None:
        """(status, state model) of an instance, or None."""
        found = await self.store.load(self.subscriber, saga, key)
        if found is None:
            return None
        return found.status, self.sagas[saga].load_state(found.state)
