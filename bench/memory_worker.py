"""The subscriber process of the memory scenario: `python -m bench.memory_worker MODE …`.

MODE is `bus` (a `Runtime`, SQLite store) or `raw` (aio-pika consumer, validate, SQLite
`INSERT OR IGNORE`, ack). It prints `ready` once consuming, then answers each `wait N` line on
stdin with `done N` when N events were handled; `quit` stops it. The parent reads our VmRSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import sys
from pathlib import Path
from typing import Any

from bench.common import Counter, Order
from bench.consumers import RawSqlite, bus_consuming, raw_consuming
from bus.stores import open_store
from bus.topology.model import from_dict


async def serve(mode: str, url: str, doc: dict[str, Any], name: str, db: Path) -> None:
    topo = from_dict(doc, source="bench:memory")
    counter = Counter(1 << 62)

    async def on_event(event: Order) -> None:
        counter.hit()

    async with contextlib.AsyncExitStack() as stack:
        if mode == "bus":
            store = await open_store(f"sqlite:///{db}")
            stack.push_async_callback(store.close)
            await stack.enter_async_context(bus_consuming(url, topo, name, Order, on_event, store))
        else:
            raw_store = await RawSqlite.open(str(db))
            stack.push_async_callback(raw_store.close)
            await stack.enter_async_context(
                raw_consuming(
                    url, topo.subscriber(name).queue, Order, on_event,
                    prefetch=topo.subscriber(name).prefetch, store=raw_store,
                )
            )  # fmt: skip
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
            if not line or line[0] == "quit":
                return
            await counter.until(int(line[1]), timeout=3600)
            gc.collect()
            print(f"done {counter.count}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("bus", "raw"))
    p.add_argument("url")
    p.add_argument("topology", type=Path, help="the topology as JSON")
    p.add_argument("subscriber")
    p.add_argument("db", type=Path)
    a = p.parse_args()
    doc = json.loads(a.topology.read_text())
    asyncio.run(serve(a.mode, a.url, doc, a.subscriber, a.db))


if __name__ == "__main__":
    main()
