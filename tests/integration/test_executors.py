"""Handlers for real work on the real broker: threads, processes, limits and timeouts."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any

import pytest

from bus import ConfigError, Context, Publisher, Router
from bus.consume.runtime import Runtime
from bus.stores import MemoryStore
from tests.conftest import wait_for
from tests.executor_handlers import router as jobs_router
from tests.integration.helpers import applied, get_all, make_topology, queue_depth

JOB_EVENTS = ("job.cpu", "job.blocking", "job.ping", "job.slow", "job.done")


def job_topology(prefix: str, **jobs: Any) -> Any:
    exchange = f"{prefix}.events"
    return make_topology(
        prefix,
        {"jobs": {"keys": list(JOB_EVENTS[:-1]), **jobs}, "done": {"keys": ["job.done"]}},
        delays=["200ms"],
        events={t: {"exchange": exchange} for t in JOB_EVENTS},
    )


def with_heartbeat(url: str, seconds: int) -> str:
    return f"{url}{'&' if '?' in url else '?'}heartbeat={seconds}"


async def test_four_blocking_jobs_of_2s_with_concurrency_4_finish_in_about_2s(
    amqp_url: str, prefix: str
) -> None:
    topology = job_topology(prefix, concurrency=4)
    async with applied(amqp_url, topology), Publisher(amqp_url, topology) as pub:
        rt = Runtime(topology, "jobs", jobs_router, url=amqp_url, store=MemoryStore())
        await rt.start()
        try:
            started = time.monotonic()
            for i in range(4):
                await pub.publish("job.blocking", {"job_id": f"b-{i}", "seconds": 2})
            done = f"{prefix}.done"
            await wait_for(lambda: queue_depth(amqp_url, done), message="a first follow-up",
                           timeout=10)  # fmt: skip
            await wait_for(lambda: _is(queue_depth(amqp_url, done), 4), timeout=10,
                           message="4 follow-ups")  # fmt: skip
            took = time.monotonic() - started
        finally:
            await rt.stop(5)
        causes = {m.headers.get("bus-causation-id") for m in await get_all(amqp_url, done)}
        assert len(causes) == 4, "each job handled once"
        print(f"figure: 4 blocking jobs of 2 s, concurrency 4: {took:.2f}s")
        assert 1.9 < took < 3.2, f"4 jobs of 2 s on 4 threads took {took:.2f}s"


async def _is(depth: Any, n: int) -> bool:
    return bool(await depth == n)


@pytest.mark.slow
async def test_a_10s_cpu_handler_in_a_process_leaves_heartbeats_and_async_handlers_going(
    amqp_url: str, prefix: str
) -> None:
    topology = job_topology(prefix)
    pings: list[float] = []
    router = Router()
    router.include(jobs_router)

    @router.on("job.ping")
    async def ping(event: dict[str, Any], ctx: Context) -> None:
        pings.append(time.monotonic())

    url = with_heartbeat(amqp_url, 2)
    async with applied(amqp_url, topology), Publisher(amqp_url, topology) as pub:
        rt = Runtime(topology, "jobs", router, url=url, store=MemoryStore())
        await rt.start()
        try:
            connection = rt._connection
            await pub.publish("job.cpu", {"job_id": "cpu-1", "seconds": 10}, id="cpu-1")
            await wait_for(lambda: rt.inflight == 1, message="the CPU job running")
            answered = []
            for i in range(8):  # one ping a second while the CPU job runs
                sent = time.monotonic()
                await pub.publish("job.ping", {}, id=f"p-{i}")
                await wait_for(lambda n=i: len(pings) > n, timeout=5, message=f"ping {i}")
                answered.append(pings[-1] - sent)
                assert rt.ready and rt.inflight >= 1, "not ready, or the CPU job ended early"
                await asyncio.sleep(1)
            await wait_for(lambda: queue_depth(amqp_url, f"{prefix}.done"), timeout=15,
                           message="the CPU job's follow-up")  # fmt: skip
            await wait_for(lambda: rt.inflight == 0, message="nothing in flight")
            assert rt._connection is connection and connection is not None
            assert connection.connected.is_set(), "the connection was lost"
        finally:
            await rt.stop(5)
        assert len(await get_all(amqp_url, f"{prefix}.done")) == 1, "handled more than once"
        print(f"figure: async pings during a 10 s CPU handler: max {max(answered) * 1000:.1f} ms")
        assert max(answered) < 0.5, f"pings answered in {answered}"
        assert await queue_depth(amqp_url, f"{prefix}.jobs") == 0


slow = Router()


@slow.on("job.slow")
async def sleepy(event: dict[str, Any], ctx: Context) -> None:
    await asyncio.sleep(30)


async def test_a_handler_over_its_timeout_takes_the_ladder_and_parks_with_handler_timeout(
    amqp_url: str, prefix: str
) -> None:
    topology = job_topology(prefix, timeout="300ms")
    async with applied(amqp_url, topology), Publisher(amqp_url, topology) as pub:
        rt = Runtime(topology, "jobs", slow, url=amqp_url, store=MemoryStore())
        await rt.start()
        try:
            await pub.publish("job.slow", {}, id="slow-1")
            await wait_for(lambda: queue_depth(amqp_url, f"{prefix}.jobs.dlq"), timeout=10,
                           message="the timed-out event in the DLQ")  # fmt: skip
        finally:
            await rt.stop(5)
        (parked,) = await get_all(amqp_url, f"{prefix}.jobs.dlq")
        assert parked.headers["bus-exception-type"] == "bus.HandlerTimeout"
        assert parked.headers["bus-dead-reason"] == "retries-exhausted"
        assert parked.headers["bus-attempt"] == 2


async def test_a_rate_limit_of_5_per_s_spaces_20_queued_events_over_about_4s(
    amqp_url: str, prefix: str
) -> None:
    topology = job_topology(prefix, rate_limit="5/s")
    starts: list[float] = []
    router = Router()

    @router.on("job.ping")
    async def ping(event: dict[str, Any], ctx: Context) -> None:
        starts.append(time.monotonic())

    async with applied(amqp_url, topology), Publisher(amqp_url, topology) as pub:
        await pub.publish_many([("job.ping", {}) for _ in range(20)])
        rt = Runtime(topology, "jobs", router, url=amqp_url, store=MemoryStore())
        await rt.start()
        try:
            await wait_for(lambda: len(starts) == 20, timeout=10, message="20 handler starts")
        finally:
            await rt.stop(5)
    span = starts[-1] - starts[0]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    print(f"figure: 20 queued events at 5/s: starts over {span:.2f}s, min gap {min(gaps):.3f}s")
    assert 3.5 < span < 4.5, f"20 starts at 5/s spread over {span:.2f}s"
    assert min(gaps) > 0.15, f"two starts {min(gaps):.3f}s apart"


async def test_stop_drains_loop_thread_and_process_handlers_within_the_grace_period(
    amqp_url: str, prefix: str
) -> None:
    topology = job_topology(prefix)
    router = Router()
    router.include(jobs_router)
    finished: list[str] = []

    @router.on("job.ping")
    async def ping(event: dict[str, Any], ctx: Context) -> None:
        await asyncio.sleep(1)
        finished.append("loop")

    async with applied(amqp_url, topology), Publisher(amqp_url, topology) as pub:
        rt = Runtime(topology, "jobs", router, url=amqp_url, store=MemoryStore())
        await rt.start()
        await pub.publish("job.ping", {})
        await pub.publish("job.blocking", {"job_id": "t", "seconds": 1})
        await pub.publish("job.cpu", {"job_id": "p", "seconds": 1})
        await wait_for(lambda: rt.inflight == 3, message="three handlers running")
        started = time.monotonic()
        drained = await rt.stop(10)
        took = time.monotonic() - started
        assert drained, "stop() cut handlers off"
        assert finished == ["loop"]
        assert len(await get_all(amqp_url, f"{prefix}.done")) == 2, "thread and process done"
        assert await queue_depth(amqp_url, f"{prefix}.jobs") == 0, "everything was acked"
        assert took < 5, f"draining took {took:.1f}s"


async def test_a_handler_past_half_the_consumer_timeout_without_a_timeout_is_warned_about(
    amqp_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    topology = job_topology(prefix)
    router = Router()

    @router.on("job.ping")
    async def long(event: dict[str, Any], ctx: Context) -> None:
        await asyncio.sleep(1.5)

    async with applied(amqp_url, topology), Publisher(amqp_url, topology) as pub:
        # a broker whose consumer_timeout is 2 s: half of it is 1 s
        rt = Runtime(topology, "jobs", router, url=amqp_url, store=MemoryStore(),
                     consumer_timeout=2.0)  # fmt: skip
        await rt.start()
        try:
            with caplog.at_level(logging.WARNING, logger="bus.consume.watchdog"):
                await pub.publish("job.ping", {})
                await wait_for(lambda: "half of the broker's consumer_timeout (2s)" in caplog.text,
                               timeout=5, message="the watchdog's warning")  # fmt: skip
        finally:
            await rt.stop(5)


def test_a_runtime_refuses_a_timeout_not_below_the_consumer_timeout(prefix: str) -> None:
    topology = job_topology(prefix, timeout="2s")
    with pytest.raises(ConfigError, match="timeout 2s is not below the broker's consumer_timeout"):
        Runtime(topology, "jobs", Router(), url="amqp://localhost:1/", store=MemoryStore(),
                consumer_timeout=2.0)  # fmt: skip
