"""The orders API as it would be without the outbox: it publishes `order.placed` with a
`Publisher` inside the request (and inside its transaction), the way the outbox replaces.

Only for `bench/api.py`, which measures the real API (`python -m api`) against this one:
`python -m bench.api_direct --port P`, configured by the same environment as `python -m api`.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import uvicorn

from api.orders import create_app
from api.settings import SOURCE, ApiSettings
from bus.outbox import Outbox
from bus.produce.publisher import Publisher
from bus.topology.model import Topology
from bus.topology.model import load as load_topology


class PublishInRequest(Outbox):
    """`add` publishes at once and waits for the broker's confirm instead of writing a row."""

    def __init__(self, topology: Topology, url: str) -> None:
        super().__init__(topology, source=SOURCE)
        self._publisher = Publisher(url, topology, source=SOURCE)
        self._connected: asyncio.Task[Publisher] | None = None

    async def add(self, conn: Any, event_type: str, data: Any, **kw: Any) -> str:
        if self._connected is None:
            self._connected = asyncio.ensure_future(self._publisher.connect())
        publisher = await asyncio.shield(self._connected)
        return await publisher.publish(event_type, data, **kw)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.api_direct")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = ApiSettings.from_env(port=args.port, subscribe=False, gc_freeze=True)
    topology = load_topology(settings.bus.topology)
    app = create_app(
        settings, topology=topology, outbox=PublishInRequest(topology, settings.bus.url)
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, access_log=False, log_config=None)


if __name__ == "__main__":
    main()
