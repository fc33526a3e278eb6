"""The process executor's cost per event against a plain `ProcessPoolExecutor` doing the same.

`python -m bench.process_executor [--events 3000] [--rounds 4] [--workers 2]`

Both sides run `bench.process_work.work(event, ctx)` in *workers* processes, keeping twice
that many calls in flight, for the same events: "bus" through `bus.consume.executors.Runner` exactly
as dispatch calls a `@router.on(..., executor="process")` handler (a `ProcessContext` built
and pickled per event, follow-ups returned), "plain" through `loop.run_in_executor` on a
`concurrent.futures.ProcessPoolExecutor` with a context of the same size. Rounds go in ABBA
order; each is timed from the first call to the last result. Workers are started before.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from bench.common import abba
from bench.process_work import work
from bus.consume.context import Context, ProcessContext
from bus.consume.executors import Runner
from bus.consume.router import Router
from bus.envelope import decode_meta
from bus.topology.model import from_dict

BUS, PLAIN = "bus", "plain"
router = Router()
router.on("bench.work", executor="process")(work)


def contexts(n: int) -> list[Context]:
    out = []
    for i in range(n):
        meta = decode_meta(message_id=f"e-{i}", type="bench.work", app_id="bench",
                           timestamp=None, correlation_id=None, headers={})  # fmt: skip
        out.append(Context(meta, 1, "bench", "bench.work", {}, None))  # type: ignore[arg-type]
    return out


async def timed(n: int, in_flight: int, call: Callable[[int], Awaitable[Any]]) -> float:
    gate = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        async with gate:
            await call(i)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - started


def _via_bus(runner: Runner, handler: Any, event: Any, ctxs: list[Context], i: int) -> Any:
    return runner.run(handler, event, ctxs[i])


def _via_pool(
    loop: asyncio.AbstractEventLoop, pool: ProcessPoolExecutor, event: Any,
    ctxs: list[Context], i: int,
) -> Any:  # fmt: skip
    return loop.run_in_executor(pool, work, event, ProcessContext(ctxs[i]))


async def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.process_executor")
    p.add_argument("--events", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work-us", type=int, action="append", help="CPU per event (default 0, 1000)")
    args = p.parse_args(argv)
    topo = from_dict({
        "version": 1, "exchanges": {"x": {}}, "events": {"bench.work": {"exchange": "x"}},
        "subscribers": {"bench": {"handlers": "bench.process_executor:router",
                                  "concurrency": args.workers,
                                  "bindings": [{"exchange": "x", "keys": ["bench.work"]}]}},
    })  # fmt: skip
    runner = Runner.for_subscriber(topo.subscriber("bench"))
    await runner.start(router.handlers)
    handler = router.handlers[0]
    plain = ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"))
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(loop.run_in_executor(plain, work, {"us": 0}, None)
                           for _ in range(args.workers * 4)))  # fmt: skip
    ctxs = contexts(args.events)
    in_flight = args.workers * 2
    print(f"process executor vs ProcessPoolExecutor: {args.events} events x {args.rounds} "
          f"rounds (ABBA), {args.workers} workers, {in_flight} in flight")  # fmt: skip
    try:
        for us in args.work_us or [0, 1000]:
            event = {"us": us}
            spent: dict[str, float] = {BUS: 0.0, PLAIN: 0.0}
            calls: dict[str, Callable[[int], Awaitable[Any]]] = {
                BUS: functools.partial(_via_bus, runner, handler, event, ctxs),
                PLAIN: functools.partial(_via_pool, loop, plain, event, ctxs),
            }
            for order in abba(args.rounds, (PLAIN, BUS)):
                for side in order:
                    spent[side] += await timed(args.events, in_flight, calls[side])
            per = {s: spent[s] / (args.events * args.rounds) * 1e6 for s in spent}
            ratio = per[BUS] / per[PLAIN]
            verdict = "ok" if ratio <= 1.2 else "MISSED"
            print(
                f"  work {us:>5} µs/event: bus {per[BUS]:7.1f} µs/event, plain "
                f"{per[PLAIN]:7.1f} µs/event, bus/plain {ratio:.2f} (target <= 1.2: {verdict})"
            )
    finally:
        await runner.close()
        plain.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
