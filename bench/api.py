"""Scenario api: the orders API end to end, at a steady rate of orders.

bus: the real API (`python -m api`, PostgreSQL) writes each order and its `order.placed` row in
one transaction; a `bus relay` process publishes it; a subscriber in this process records when
each order's event arrives. reference ("raw" column): the same API publishing `order.placed`
with a `Publisher` inside the request (`bench/api_direct.py`), what the outbox replaces. Both
APIs run throughout; the load (open loop: one POST every 1/rate s, whatever the answers) goes
to one at a time in ABBA rounds. Measured: the POST's response time as its client sees it, and
POST → handler (the event's arrival at the subscriber).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.common import BUS, RAW, Env, Row, abba, declared, new_prefix, percentile, topology_doc
from bench.outbox import _postgres
from bus.consume.context import Context
from bus.consume.router import Router
from bus.consume.runtime import Runtime
from bus.stores import MemoryStore
from bus.topology.model import from_dict
from demo.stubs import free_port

NAME = "api"
KEY = "order.placed"
ROOT = Path(__file__).resolve().parent.parent
BODY = {"email": "ada@example.com", "customer": "Ada", "items": [{"sku": "BOOK-1", "quantity": 2}]}
P99_TARGET_MS = 25.0


async def run(env: Env) -> list[Row]:
    prefix = new_prefix()
    doc = topology_doc(
        prefix, {"sink": [KEY]}, [KEY], queue_type=env.queue_type, prefetch=env.prefetch
    )
    topo = from_dict(doc, source=f"bench:{prefix}")
    arrived: dict[str, float] = {}
    router = Router()

    @router.on(KEY)
    async def record(event: dict[str, Any], ctx: Context) -> None:
        arrived.setdefault(event["order_id"], time.perf_counter())

    with tempfile.TemporaryDirectory() as folder:
        topology_file = Path(folder) / "topology.yaml"
        topology_file.write_text(yaml.safe_dump(doc))
        async with declared(env.url, topo), _postgres() as db, _postgres() as direct_db:
            rt = Runtime(topo, "sink", router, url=env.url, store=MemoryStore())
            await rt.start()
            try:
                async with _processes(env, topology_file, db, direct_db, Path(folder)) as apis:
                    samples = await _rounds(env, apis, arrived)
            finally:
                await rt.stop(5)
    return _rows(env, samples)


@contextlib.asynccontextmanager
async def _processes(
    env: Env, topology_file: Path, db: str, direct_db: str, folder: Path
) -> AsyncIterator[dict[str, str]]:
    """Both APIs and the relay, as processes; yields the base URL of each side's API."""
    base = {
        **os.environ, "BUS_URL": env.url, "BUS_TOPOLOGY": str(topology_file),
        "API_SUBSCRIBE": "0", "BUS_LOG_LEVEL": "WARNING",
    }  # fmt: skip
    ports = {BUS: free_port(), RAW: free_port()}
    commands = {
        "api": ([sys.executable, "-m", "api", "--port", str(ports[BUS])], db),
        "relay": ([sys.executable, "-m", "bus.cli", "relay"], db),
        "direct": (
            [sys.executable, "-m", "bench.api_direct", "--port", str(ports[RAW])],
            direct_db,
        ),
    }
    procs: list[asyncio.subprocess.Process] = []
    try:
        for name, (argv, url) in commands.items():
            with (folder / f"{name}.log").open("wb") as log:
                procs.append(await asyncio.create_subprocess_exec(
                    *argv, cwd=ROOT, env={**base, "BUS_OUTBOX_URL": url}, stdout=log, stderr=log,
                ))  # fmt: skip
        apis = {side: f"http://127.0.0.1:{port}" for side, port in ports.items()}
        await _until_ready(apis.values(), procs, folder)
        yield apis
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()


async def _until_ready(urls: Any, procs: list[asyncio.subprocess.Process], folder: Path) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=2) as client:
        for url in urls:
            while True:
                if any(p.returncode is not None for p in procs):
                    raise RuntimeError(f"an API or the relay exited (logs: {_tails(folder)})")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{url}/readyz")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} not ready after 30 s")
                await asyncio.sleep(0.1)


async def _rounds(
    env: Env, apis: dict[str, str], arrived: dict[str, float]
) -> dict[str, tuple[list[float], list[float]]]:
    """(response times, POST → handler times) in seconds, per side."""
    out: dict[str, tuple[list[float], list[float]]] = {BUS: ([], []), RAW: ([], [])}
    rounds = env.counts.rounds
    seconds = env.counts.api_seconds / rounds
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:
        for api in apis.values():  # warm-up: connections, first queries, code paths
            await asyncio.gather(*(client.post(f"{api}/orders", json=BODY) for _ in range(20)))
        for order_ in abba(rounds):
            for side in order_:
                sent = await _load(client, apis[side], env.counts.api_rate, seconds)
                await _until_arrived(sent, arrived)
                responses, ends = out[side]
                responses += [took for _, took in sent.values()]
                ends += [arrived[oid] - start for oid, (start, _) in sent.items()]
    return out


async def _load(
    client: httpx.AsyncClient, api: str, rate: float, seconds: float
) -> dict[str, tuple[float, float]]:
    """Open loop: a POST every 1/rate s for *seconds*; order id -> (sent at, response time)."""
    sent: dict[str, tuple[float, float]] = {}
    n = int(rate * seconds)
    start = time.perf_counter()

    async def one() -> None:
        t0 = time.perf_counter()
        response = await client.post(f"{api}/orders", json=BODY)
        took = time.perf_counter() - t0
        if response.status_code != 201:
            raise RuntimeError(f"POST /orders answered {response.status_code}: {response.text}")
        sent[response.json()["order_id"]] = (t0, took)

    tasks = []
    for i in range(n):
        pause = start + i / rate - time.perf_counter()
        if pause > 0:
            await asyncio.sleep(pause)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return sent


async def _until_arrived(sent: dict[str, Any], arrived: dict[str, float]) -> None:
    deadline = time.monotonic() + 60
    while any(oid not in arrived for oid in sent):
        if time.monotonic() > deadline:
            missing = sum(oid not in arrived for oid in sent)
            raise RuntimeError(f"{missing} of {len(sent)} orders' events never arrived")
        await asyncio.sleep(0.02)


def _rows(env: Env, samples: dict[str, tuple[list[float], list[float]]]) -> list[Row]:
    def ms(side: str, which: int, p: float) -> float:
        return percentile(sorted(samples[side][which]), p) * 1000

    rate = env.counts.api_rate
    p99_bus, p99_raw = ms(BUS, 0, 99), ms(RAW, 0, 99)
    target = f"p99 < {P99_TARGET_MS:g} ms, <= direct"
    met = p99_bus < P99_TARGET_MS and p99_bus <= p99_raw
    rows = [
        Row(NAME, f"POST /orders response p50 at {rate}/s", "ms", ms(BUS, 0, 50),
            ms(RAW, 0, 50), False),
        Row(NAME, f"POST /orders response p99 at {rate}/s", "ms", p99_bus, p99_raw, False,
            target, met),
        Row(NAME, "POST → subscriber handler p50", "ms", ms(BUS, 1, 50), ms(RAW, 1, 50), False),
        Row(NAME, "POST → subscriber handler p99", "ms", ms(BUS, 1, 99), ms(RAW, 1, 99), False),
    ]  # fmt: skip
    for row in rows:
        row.note = "bus: the API, its outbox, a relay; raw: the same API publishing in the request"
    return rows


def _tails(folder: Path) -> str:
    return "; ".join(f"{p.name}: {p.read_text()[-300:]}" for p in sorted(folder.glob("*.log")))
