"""What `bus demo` runs beside itself as processes: the services, the orders API and relays;
how it waits for them, stops them and reads their metrics. (The SMTP sink and the warehouse,
threads of the demo process, are in `demo.stubs`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bus.errors import BusError
from demo.stubs import free_port

# -- the services, as processes ---------------------------------------------------------------


@dataclass
class Service:
    name: str
    port: int
    log: Path
    process: asyncio.subprocess.Process

    def died(self) -> str | None:
        code = self.process.returncode
        return None if code is None else f"{self.name} exited with code {code} ({self.tail()})"

    def tail(self) -> str:
        try:
            lines = self.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return f"{self.log}: {lines[-1]}" if lines else f"see {self.log}"


async def start_service(name: str, env: Mapping[str, str], workdir: Path) -> Service:
    """`bus run NAME` as its own process, with its metrics on a free port."""
    port = free_port()
    env = {**env, "BUS_METRICS_PORT": str(port)}
    return await _start(name, ["-m", "bus.cli", "run", name], env, workdir, port)


async def start_api(env: Mapping[str, str], workdir: Path, subscriber: str) -> Service:
    """The orders API (`python -m api`), which runs *subscriber* inside it; /metrics on its port."""
    port = free_port()
    return await _start(subscriber, ["-m", "api", "--port", str(port)], env, workdir, port, "api")


async def start_relay(env: Mapping[str, str], workdir: Path, n: int = 1) -> Service:
    """`bus relay` as its own process (the demo may SIGKILL it), its metrics on a free port."""
    port = free_port()
    args = ["-m", "bus.cli", "relay", "--metrics-port", str(port)]
    return await _start("relay", args, env, workdir, port, f"relay-{n}")


async def _start(
    name: str, args: list[str], env: Mapping[str, str], workdir: Path, port: int,
    log_name: str | None = None,
) -> Service:  # fmt: skip
    log = workdir / f"{log_name or name}.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, *args, env=dict(env),
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
        )  # fmt: skip
    return Service(name, port, log, process)


async def wait_ready(
    services: Sequence[Service], client: httpx.AsyncClient, timeout: float
) -> None:
    """Until every service answers /readyz with 200; a service that dies or lags is an error."""
    waiting = list(services)
    deadline = time.monotonic() + timeout
    while waiting:
        for s in list(waiting):
            if s.died():
                raise BusError(f"{s.died()} before it was ready")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"http://127.0.0.1:{s.port}/readyz")).status_code == 200:
                    waiting.remove(s)
        if waiting and time.monotonic() > deadline:
            names = ", ".join(s.name for s in waiting)
            raise BusError(
                f"not consuming after {timeout:.0f}s: {names} (logs in {waiting[0].log.parent})"
            )
        await asyncio.sleep(0.1)


async def stop_services(services: Sequence[Service], grace: float) -> list[str]:
    """SIGTERM every service (they drain and exit 0); what went wrong, if anything."""
    for s in services:
        if s.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                s.process.send_signal(signal.SIGTERM)
    problems = []
    for s in services:
        try:
            code = await asyncio.wait_for(s.process.wait(), grace + 5)
        except TimeoutError:
            s.process.kill()
            await s.process.wait()
            problems.append(f"{s.name} did not stop within {grace + 5:.0f}s and was killed")
            continue
        if code != 0:
            problems.append(f"{s.name} exited with code {code} ({s.tail()})")
    return problems


async def scrape_total(client: httpx.AsyncClient, service: Service, name: str) -> float:
    """The sum of every sample of metric *name* (e.g. `bus_relay_published_total`) of a process."""
    try:
        text = (await client.get(f"http://127.0.0.1:{service.port}/metrics")).text
    except httpx.HTTPError:
        return 0.0
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


async def scrape(client: httpx.AsyncClient, service: Service) -> dict[str, int]:
    """`bus_consumed_total` of one service, summed per outcome."""
    try:
        text = (await client.get(f"http://127.0.0.1:{service.port}/metrics")).text
    except httpx.HTTPError:
        return {}
    out: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "bus_consumed_total"
                and sample.labels.get("subscriber") == service.name
            ):
                outcome = sample.labels.get("outcome", "")
                out[outcome] = out.get(outcome, 0) + int(sample.value)
    return out


async def apply_topology(env: Mapping[str, str], path: Path, log: Path) -> str:
    """`bus topology apply` of the file *path*, as its own process, as an operator would run it;
    its output (also written to *log*). A failure is a BusError with its last line."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bus.cli", "topology", "apply", "--topology", str(path),
        env=dict(env), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await process.communicate()
    text = out.decode(errors="replace")
    await asyncio.to_thread(log.write_text, text, encoding="utf-8")
    if process.returncode != 0:
        last = text.strip().splitlines()[-1:] or ["no output"]
        raise BusError(f"bus topology apply exited with {process.returncode}: {last[0]}")
    return text
