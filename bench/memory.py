"""Scenario 6, memory: a subscriber process's RSS after 10k and after 100k events.

The subscriber runs in a subprocess (`bench.memory_worker`); we publish the events, wait until it
handled them, and read VmRSS from /proc/<pid>/status. bus: a `Runtime` with the SQLite store (the
default `BUS_STORE_URL`); raw: aio-pika consumer + SQLite `INSERT OR IGNORE`. Growth in % from the
first mark to the second is the leak indicator (target: bus < 10%).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

from bench.common import Env, Row, declared, fill, new_prefix, topology_doc
from bus.topology.model import from_dict

NAME = "memory"
ROOT = Path(__file__).resolve().parent.parent
KEYS = {"bus": "bench.mem_bus", "raw": "bench.mem_raw"}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def run(env: Env) -> list[Row]:
    small, large = env.counts.mem_small, env.counts.mem_large
    prefix = new_prefix()
    doc = topology_doc(
        prefix, {m: [k] for m, k in KEYS.items()}, list(KEYS.values()),
        queue_type=env.queue_type, prefetch=env.prefetch,
    )  # fmt: skip
    topo = from_dict(doc, source=f"bench:{prefix}")
    exchange = f"{prefix}.events"
    rss: dict[str, tuple[int, int]] = {}
    async with declared(env.url, topo):
        with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
            path = Path(tmp) / "topology.json"
            path.write_text(json.dumps(doc))
            for mode in ("raw", "bus"):
                rss[mode] = await _measure(env, mode, path, exchange, Path(tmp), small, large)
    mib = 1024
    (bus_a, bus_b), (raw_a, raw_b) = rss["bus"], rss["raw"]
    bus_growth = (bus_b - bus_a) / bus_a * 100
    raw_growth = (raw_b - raw_a) / raw_a * 100
    return [
        Row(NAME, f"subscriber RSS after {small:,} events", "MiB", bus_a / mib, raw_a / mib,
            False),
        Row(NAME, f"subscriber RSS after {large:,} events", "MiB", bus_b / mib, raw_b / mib,
            False),
        Row(NAME, f"RSS growth {small:,} -> {large:,}", "%", bus_growth, raw_growth, False,
            "bus < 10%", bus_growth < 10),
    ]  # fmt: skip


async def _measure(
    env: Env, mode: str, topology: Path, exchange: str, tmp: Path, small: int, large: int
) -> tuple[int, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.memory_worker", mode, env.url, str(topology), mode,
        str(tmp / f"{mode}.db"), cwd=ROOT, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdin, stdout = proc.stdin, proc.stdout
    assert stdin is not None and stdout is not None
    try:

        async def expect(word: str) -> None:
            timeout = 60 + large / 200
            try:
                line = await asyncio.wait_for(stdout.readline(), timeout)
            except TimeoutError:
                raise TimeoutError(
                    f"memory worker ({mode}) did not say {word!r} within {timeout:.0f}s"
                ) from None
            if not line.startswith(word.encode()):
                raise RuntimeError(f"memory worker ({mode}) said {line!r}, expected {word!r}")

        async def mark(total: int) -> int:
            stdin.write(f"wait {total}\n".encode())
            await stdin.drain()
            await expect("done")
            return rss_kib(proc.pid)

        await expect("ready")
        await fill(env.url, exchange, KEYS[mode], small)
        first = await mark(small)
        await fill(env.url, exchange, KEYS[mode], large - small)
        second = await mark(large)
        stdin.write(b"quit\n")
        await stdin.drain()
        await asyncio.wait_for(proc.wait(), 30)
        return first, second
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
