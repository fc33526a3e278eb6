"""Where handlers run: the loop, a thread pool, a process pool; limits and timeouts (no broker)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel

from bus import Context, Router
from bus.consume import workers
from bus.consume.context import ProcessContext
from bus.consume.executors import Runner
from bus.consume.limits import Limits
from bus.consume.router import Executor
from bus.consume.workers import ProcessPool
from bus.errors import HandlerTimeout, WorkerLost
from bus.testing import TestBus
from bus.topology.model import Topology, from_dict
from tests.executor_handlers import Job, crunch, measure
from tests.executor_handlers import router as jobs_router

done = Router()
seen: list[dict[str, Any]] = []


@done.on("job.done")
async def record(event: dict[str, Any], ctx: Context) -> None:
    seen.append({**event, "id": ctx.id, "causation": ctx.headers.get("bus-causation-id")})


def topology(**jobs: Any) -> Topology:
    return from_dict(
        {
            "version": 1,
            "defaults": {"retry": {"delays": ["1s"]}},
            "exchanges": {"events": {}},
            "events": {t: {"exchange": "events"} for t in
                       ("job.cpu", "job.blocking", "job.exit", "job.slow", "job.done")},
            "subscribers": {
                "jobs": {"handlers": "tests.executor_handlers:router",
                         "bindings": [{"exchange": "events", "keys": ["job.cpu", "job.blocking",
                                                                      "job.exit", "job.slow"]}],
                         **jobs},
                "done": {"handlers": "tests.unit.test_executors:done",
                         "bindings": [{"exchange": "events", "keys": ["job.done"]}]},
            },
        }
    )  # fmt: skip


@pytest.fixture(autouse=True)
def _clear() -> None:
    seen.clear()


async def test_process_handler_runs_in_another_process_and_its_follow_up_is_published() -> None:
    async with TestBus(topology(), routers={"jobs": jobs_router, "done": done}) as tb:
        event_id = await tb.publish("job.cpu", {"job_id": "j-1", "seconds": 0.05})
        await tb.settle()
        assert [h.id for h in tb.handled("jobs")] == [event_id]
        (follow_up,) = seen
        assert follow_up["pid"] != os.getpid(), "the handler ran in this process"
        assert follow_up["causation"] == event_id
    async with TestBus(topology(), routers={"jobs": jobs_router, "done": done}) as tb:
        await tb.publish("job.cpu", {"job_id": "j-1", "seconds": 0.0}, id=event_id)
        await tb.settle()
    assert seen[1]["id"] == follow_up["id"], "a follow-up id derives from the event id"


async def test_process_handler_failure_takes_the_ladder_and_reject_parks() -> None:
    async with TestBus(topology(), routers={"jobs": jobs_router, "done": done}) as tb:
        await tb.publish("job.cpu", {"job_id": "fail-1"}, id="f-1")
        await tb.publish("job.cpu", {"job_id": "reject-1"}, id="r-1")
        await tb.settle()
        assert [(h.id, h.attempt) for h in tb.handled("jobs")] == [("f-1", 2)]
        (parked,) = tb.parked("jobs")
        assert (parked.id, parked.reason) == ("r-1", "rejected")
        assert parked.headers["bus-exception-type"] == "bus.errors.Reject"
        assert [s["job_id"] for s in seen] == ["fail-1"], "a failed attempt published nothing"


async def test_a_worker_that_dies_under_its_handler_is_replaced_and_the_event_retried() -> None:
    async with TestBus(topology(), routers={"jobs": jobs_router, "done": done}) as tb:
        await tb.publish("job.exit", {}, id="x-1")
        await tb.settle()
        assert [(h.id, h.attempt) for h in tb.handled("jobs")] == [("x-1", 2)]
        assert tb.parked("jobs") == []


async def test_process_handler_over_its_timeout_is_replaced_and_parks_after_the_ladder() -> None:
    async with TestBus(
        topology(timeout="500ms"), routers={"jobs": jobs_router, "done": done}
    ) as tb:
        started = time.monotonic()
        await tb.publish("job.cpu", {"job_id": "long", "seconds": 30}, id="t-1")
        await tb.settle()
        assert time.monotonic() - started < 10, "the 30 s handler was not stopped"
        (parked,) = tb.parked("jobs")
        assert parked.reason == "retries-exhausted"
        assert parked.headers["bus-exception-type"] == "bus.HandlerTimeout"
        assert "its process was replaced" in parked.headers["bus-exception-message"]
        await tb.publish("job.cpu", {"job_id": "short"}, id="t-2")
        await tb.settle()
        assert [h.id for h in tb.handled("jobs")] == ["t-2"], "the pool serves after a kill"


async def test_plain_def_runs_in_a_thread_with_a_blocking_ctx_publish() -> None:
    async with TestBus(topology(), routers={"jobs": jobs_router, "done": done}) as tb:
        await tb.publish("job.blocking", {"job_id": "b-1", "seconds": 0.01})
        await tb.settle()
        (follow_up,) = seen
        assert follow_up["thread"].startswith("bus-jobs"), follow_up
        assert follow_up["thread"] != threading.current_thread().name


slow = Router()


@slow.on("job.slow")
async def sleepy(event: dict[str, Any], ctx: Context) -> None:
    await asyncio.sleep(30)


async def test_async_handler_over_its_timeout_is_cancelled_and_fails_with_handler_timeout() -> None:
    async with TestBus(topology(timeout="200ms"), routers={"jobs": slow, "done": done}) as tb:
        await tb.publish("job.slow", {}, id="s-1")
        await tb.settle()
        (parked,) = tb.parked("jobs")
        assert parked.headers["bus-exception-type"] == "bus.HandlerTimeout"
        assert parked.headers["bus-attempt"] == 2


quick = Router()


@quick.on("job.slow")
async def fast(event: dict[str, Any], ctx: Context) -> None:
    return None


async def test_rate_limit_spaces_handler_starts_on_the_virtual_clock() -> None:
    async with TestBus(topology(rate_limit="5/s"), routers={"jobs": quick, "done": done}) as tb:
        for i in range(20):
            await tb.publish("job.slow", {}, id=f"e-{i}")
        await tb.settle()
        assert len(tb.handled("jobs")) == 20
        assert tb.now == pytest.approx(3.8), "20 starts at 5/s are 19 intervals of 0.2 s"


async def test_blocking_handlers_run_side_by_side_up_to_concurrency() -> None:
    for concurrency, expected in ((4, 0.5), (2, 1.0)):
        sub = topology(concurrency=concurrency).subscriber("jobs")
        runner = Runner.for_subscriber(sub)
        handler = next(h for h in jobs_router.handlers if h.executor is Executor.THREAD)
        ctx: Any = _FakeContext()
        started = time.monotonic()
        await asyncio.gather(
            *(runner.run(handler, Job(job_id=f"b-{i}", seconds=0.5), ctx) for i in range(4))
        )
        took = time.monotonic() - started
        await runner.close()
        assert expected - 0.05 < took < expected + 0.4, f"concurrency {concurrency}: {took:.2f}s"


class _FakeContext:
    async def publish(self, *_: Any, **__: Any) -> str:
        return "id"


async def test_concurrency_below_prefetch_limits_async_handlers_too() -> None:
    limits = Limits(2, None)
    running, peak = 0, 0

    async def one() -> None:
        nonlocal running, peak
        async with limits:
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1

    await asyncio.gather(*(one() for _ in range(6)))
    assert peak == 2


def test_runner_is_plain_without_limits_so_dispatch_calls_async_handlers_directly() -> None:
    assert Runner.for_subscriber(topology().subscriber("jobs")).plain
    assert not Runner.for_subscriber(topology(timeout="1s").subscriber("jobs")).plain
    assert not Runner.for_subscriber(topology(concurrency=4).subscriber("jobs")).plain
    assert Runner.for_subscriber(topology(concurrency=64).subscriber("jobs")).plain


def test_what_cannot_cross_into_a_process_is_refused_at_registration() -> None:
    router = Router()

    def nested(event: dict[str, Any], ctx: ProcessContext) -> None: ...

    with pytest.raises(TypeError, match="top level of an importable module"):
        router.on("a", executor="process")(nested)

    class Inner(BaseModel):
        x: int

    def takes_inner(event: Inner, ctx: ProcessContext) -> None: ...

    takes_inner.__qualname__ = "takes_inner"  # as if at the top level, but for its event type
    takes_inner.__annotations__ = {"event": Inner, "ctx": ProcessContext, "return": None}
    with pytest.raises(TypeError, match=r"event type .*Inner must be defined at the top level"):
        router.on("a", executor="process")(takes_inner)

    async def coro(event: dict[str, Any], ctx: Context) -> None: ...

    with pytest.raises(TypeError, match="is `async def`: it runs on the event loop"):
        router.on("a", executor="process")(coro)
    with pytest.raises(TypeError, match="executor 'gpu' is not one of"):
        router.on("a", executor="gpu")(coro)
    with pytest.raises(TypeError, match="only a plain module-level `def`"):
        router.on("a", executor="process")(lambda e, c: None)
    assert router.handlers == []


def test_handlers_choose_their_executor_by_how_they_are_written() -> None:
    router = Router()

    async def on_loop(event: dict[str, Any], ctx: Context) -> None: ...

    def in_thread(event: dict[str, Any], ctx: Any) -> None: ...

    router.on("a")(on_loop)
    router.on("b")(in_thread)
    assert [h.executor for h in router.handlers] == [Executor.LOOP, Executor.THREAD]


def test_handler_timeout_is_named_bus_handler_timeout() -> None:
    assert f"{HandlerTimeout.__module__}.{HandlerTimeout.__qualname__}" == "bus.HandlerTimeout"


sleeper = Router()


@sleeper.on("job.blocking")
def sleep_in_thread(job: Job, ctx: Any) -> None:
    time.sleep(job.seconds)


def _blocking_handler() -> Any:
    (handler,) = sleeper.handlers
    return handler


async def test_a_thread_handler_over_its_timeout_gives_its_slot_to_the_next_event() -> None:
    sub = topology(concurrency=1, timeout="300ms").subscriber("jobs")
    runner = Runner.for_subscriber(sub)
    ctx: Any = _FakeContext()
    try:
        with pytest.raises(HandlerTimeout):
            await runner.run(_blocking_handler(), Job(job_id="stuck", seconds=3), ctx)
        started = time.monotonic()
        await runner.run(_blocking_handler(), Job(job_id="next", seconds=0.05), ctx)
        assert time.monotonic() - started < 1, "the next event waited for the stuck thread"
    finally:
        await runner.close()


async def test_a_thread_handler_timeout_counts_from_its_start_not_from_its_queueing() -> None:
    # one thread, two 0.3 s jobs: the second waits 0.3 s for the thread, then runs 0.3 s;
    # each ran well inside its 0.5 s timeout
    sub = topology(concurrency=1, prefetch=1, timeout="500ms").subscriber("jobs")
    runner = Runner.for_subscriber(sub)
    ctx: Any = _FakeContext()
    try:
        await asyncio.gather(
            *(runner.run(_blocking_handler(), Job(job_id=f"q-{i}", seconds=0.3), ctx)
              for i in range(2))
        )  # fmt: skip
    finally:
        await runner.close()


@pytest.mark.parametrize("timeout", [None, 5.0])
async def test_a_worker_that_misses_its_start_deadline_is_lost_not_a_handler_timeout(
    timeout: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers, "SPAWN_DEADLINE", 0.5)
    pool = ProcessPool(1, name="slow", preload=("tests.slow_import",))
    try:
        with pytest.raises(WorkerLost, match=r"did not start within 0\.5s"):
            await pool.run(crunch, Job(job_id="j"), ProcessContext.__new__(ProcessContext), timeout)
        assert pool.workers == 0, "the worker that did not start is still in the pool"
    finally:
        await pool.close(grace=0.5)


def _process_ctx() -> ProcessContext:
    fake: Any = SimpleNamespace(
        id="e-1", type="job.cpu", source="test", time=None, attempt=1, subscriber="jobs",
        routing_key="job.cpu", correlation_id=None, headers={},
    )  # fmt: skip
    return ProcessContext(fake)


async def test_the_process_pool_never_blocks_the_loop_on_a_start_a_join_or_a_large_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop_thread = threading.get_ident()
    on_loop: list[str] = []

    def watch(cls: Any, name: str, big: bool = False) -> None:
        original = getattr(cls, name)

        def watched(self: Any, *args: Any, **kwargs: Any) -> Any:
            size = memoryview(args[0]).nbytes if big else 0
            if threading.get_ident() == loop_thread and (not big or size > 64 * 1024):
                on_loop.append(f"{cls.__name__}.{name}")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, watched)

    watch(BaseProcess, "start")
    watch(BaseProcess, "join")
    watch(Connection, "send_bytes", big=True)
    monkeypatch.setattr(Connection, "send", _send_as_bytes)
    pool = ProcessPool(1, name="watched")
    try:
        await pool.run(measure, {"blob": "x" * 512 * 1024}, _process_ctx(), 10.0)
        with pytest.raises(HandlerTimeout):
            await pool.run(crunch, Job(job_id="long", seconds=30), _process_ctx(), 0.3)
        await pool.run(measure, {"blob": "y"}, _process_ctx(), 10.0)
    finally:
        await pool.close(grace=1.0)
    assert on_loop == [], f"blocking calls ran on the event loop: {sorted(set(on_loop))}"


def _send_as_bytes(self: Connection, obj: Any) -> None:
    """`Connection.send` through `send_bytes`, so the watch sees every payload's size."""
    self.send_bytes(ForkingPickler.dumps(obj))
