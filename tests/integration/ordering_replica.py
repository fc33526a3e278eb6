"""One replica of an ordered subscriber in its own process, for the SIGKILL test.

`python -m tests.integration.ordering_replica URL TOPOLOGY_JSON STORE_PATH RECORD_FILE` runs
subscriber `fulfillment` until killed, appending one JSON line per handler start and end.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from bus import Context, Router
from bus.consume.runtime import Runtime
from bus.stores.sqlite import SqliteStore
from bus.topology.model import Topology, from_dict


def _router(record: Any) -> Router:
    router = Router()

    @router.on("order.*")
    async def handle(event: dict[str, Any], ctx: Context) -> None:
        line = {"key": event["order_id"], "seq": event["seq"], "attempt": ctx.attempt,
                "pid": os.getpid()}  # fmt: skip
        record({**line, "at": time.time(), "what": "start"})
        await asyncio.sleep(random.uniform(0.002, 0.01))
        fails = event["n"] % 7 == 0 and ctx.attempt == 1
        record({**line, "at": time.time(), "what": "fail" if fails else "ok"})
        if fails:
            raise ConnectionError("fails once")

    return router


async def main(url: str, topology: Topology, store_path: str, out: TextIO) -> None:
    def record(line: dict[str, Any]) -> None:
        out.write(json.dumps(line) + "\n")

    store = await SqliteStore.open(store_path)
    rt = Runtime(topology, "fulfillment", _router(record), url=url, store=store)
    await rt.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    url, topology_file, store_path, record_file = sys.argv[1:5]
    loaded = from_dict(json.loads(Path(topology_file).read_text(encoding="utf-8")))
    with Path(record_file).open("a", buffering=1, encoding="utf-8") as lines:
        asyncio.run(main(url, loaded, store_path, lines))
