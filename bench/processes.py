"""`bus run --processes N` beside one process: how fast N consumer processes drain one queue.

`python -m bench.processes [--events 20000] [--rounds 4] [--processes 2]` runs ABBA rounds of
`bus run bench` with one process and with N. Each round fills the subscriber's queue with
*events* events (untimed), starts `bus run` with `--metrics-port`, and counts from the moment
`/readyz` says every process consumes to the moment `bus_consumed_total` reaches *events*: the
rate over that window, so the children's start-up is left out. The handler is an empty
pydantic-annotated one and the idempotency store `memory://` (each process its own), as in
`bench.profile_consume`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from bench.common import Order, abba, declared, fill, new_prefix, topology_doc
from bus import Context, Router
from bus.topology.model import from_dict
from demo.stubs import free_port

KEY = "bench.processes"
router = Router()


@router.on(KEY)
async def handle(event: Order, ctx: Context) -> None:
    pass


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


def _consumed(text: str) -> float:
    pattern = r'^bus_consumed_total\{[^}]*outcome="ok"[^}]*\} ([0-9.e+]+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def drain(url: str, topo_file: Path, processes: int, events: int, loop: str) -> float:
    """Events/s of `bus run bench --processes N` over the window where all processes consume."""
    port = free_port()
    env = {**os.environ, "BUS_URL": url, "BUS_TOPOLOGY": str(topo_file),
           "BUS_STORE_URL": "memory://", "BUS_LOOP": loop, "BUS_LOG_LEVEL": "WARNING"}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "bus.cli", "run", "bench", "--processes", str(processes),
         "--metrics-port", str(port)],
        env=env, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60 + events / 500
        while _get(port, "/readyz")[0] != 200:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("bus run never became ready")
            time.sleep(0.01)
        t0 = time.monotonic()
        c0 = _consumed(_get(port, "/metrics")[1])
        while (c := _consumed(_get(port, "/metrics")[1])) < events:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {c:.0f} of {events} consumed")
            time.sleep(0.02)
        return (events - c0) / (time.monotonic() - t0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


async def main(args: argparse.Namespace) -> None:
    prefix = new_prefix()
    doc = topology_doc(prefix, {"bench": [KEY]}, [KEY], queue_type=args.queue_type,
                       prefetch=args.prefetch)  # fmt: skip
    doc["subscribers"]["bench"]["handlers"] = "bench.processes:router"
    one, many = "1", str(args.processes)
    rates: dict[str, list[float]] = {one: [], many: []}
    with tempfile.TemporaryDirectory() as tmp:
        topo_file = Path(tmp) / "topology.yaml"
        topo_file.write_text(yaml.safe_dump(doc))
        async with declared(args.url, from_dict(doc)) as topo:
            exchange = topo.subscriber("bench").bindings[0].exchange
            for r in range(args.rounds):
                for side in abba(args.rounds, (one, many))[r]:
                    await fill(args.url, exchange, KEY, args.events)
                    rate = await asyncio.to_thread(
                        drain, args.url, topo_file, int(side), args.events, args.loop
                    )
                    rates[side].append(rate)
                    print(f"round {r + 1}: --processes {side}: {rate:8,.0f} events/s", flush=True)
    for side in (one, many):
        print(f"--processes {side}: {sum(rates[side]) / len(rates[side]):8,.0f} events/s (mean)")
    ratios = [b / a for a, b in zip(rates[one], rates[many], strict=True)]
    print(f"--processes {many} / 1 per round: {', '.join(f'{x:.2f}' for x in ratios)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser("python -m bench.processes", description=__doc__)
    p.add_argument("--url", default=os.environ.get("BUS_URL", "amqp://guest:guest@localhost:5672/"))
    p.add_argument("--events", type=int, default=20_000, help="events per round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--prefetch", type=int, default=32)
    p.add_argument("--queue-type", choices=("quorum", "classic"), default="quorum")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
