"""What `bus demo` runs beside itself, on loopback: an SMTP sink and a flaky warehouse (threads
of the demo process, so no mail server or warehouse is needed), and the services as processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.controller import Controller
from prometheus_client.parser import text_string_to_metric_families

from bus.errors import BusError


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MailSink:
    """An SMTP server that accepts every mail and counts it. `start()`, then `stop()`."""

    def __init__(self) -> None:
        self.delivered = 0
        self.follow_ups = 0  # "How was your order?" mails: the email service's delayed event
        self._lock = threading.Lock()
        self._controller: Any = None
        self.url = ""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        follow_up = b"Subject: How was your order" in bytes(envelope.content or b"")
        with self._lock:
            self.delivered += 1
            self.follow_ups += follow_up
        return "250 OK"

    def start(self) -> MailSink:
        port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=port)
        self._controller.start()
        self.url = f"smtp://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


@dataclass
class WarehouseStats:
    calls: int = 0
    failed: int = 0  # answered 503
    accepted: int = 0  # answered 201
    recovered: int = 0  # orders accepted after at least one 503: retried, then succeeded


@dataclass
class _Ledger:
    fail_first: int
    calls: int = 0
    answers: dict[str, list[int]] = field(default_factory=dict)  # order id -> statuses
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, order_id: str) -> int:
        with self.lock:
            self.calls += 1
            status = 503 if self.calls <= self.fail_first else 201
            self.answers.setdefault(order_id, []).append(status)
            return status

    def stats(self) -> WarehouseStats:
        with self.lock:
            seen = [s for statuses in self.answers.values() for s in statuses]
            recovered = sum(
                1 for s in self.answers.values() if 201 in s and 503 in s[: s.index(201)]
            )
            return WarehouseStats(self.calls, seen.count(503), seen.count(201), recovered)


class _Backlogged(ThreadingHTTPServer):
    # socketserver listens with a backlog of 5: a burst of fulfillment's prefetch (32 calls
    # at once, e.g. when a backlog drains) would see connection resets instead of answers
    request_queue_size = 128


class FlakyWarehouse:
    """A warehouse webhook: the first *fail_first* calls get HTTP 503, every later one 201."""

    def __init__(self, fail_first: int = 3) -> None:
        self._ledger = _Ledger(fail_first)
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    def stats(self) -> WarehouseStats:
        return self._ledger.stats()

    def start(self) -> FlakyWarehouse:
        ledger = self._ledger

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    body = {}
                order_id = str(body.get("order_id", "?")) if isinstance(body, dict) else "?"
                status = ledger.answer(order_id)
                payload = json.dumps({"reference": f"WH-{ledger.calls}"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the demo's view shows the calls

        self._server = _Backlogged(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, name="demo-warehouse", daemon=True
        ).start()
        self.url = f"http://127.0.0.1:{self._server.server_port}/orders"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


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
