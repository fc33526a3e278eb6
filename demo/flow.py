"""`bus demo`: the whole flow on one machine.

A copy of the topology under a `demo.` prefix with short retry delays, a local SMTP sink and a
flaky warehouse, the services as real processes (`bus run NAME`), the orders API and a relay
as processes of their own, a stream of orders POSTed to the API as a shop's clients would (the
API writes each order and its `order.placed` into its own database, the relay publishes it),
and snapshots of what every service did, from its own /metrics. The command line renders the
snapshots; this module only runs the flow and measures it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aio_pika.abc import AbstractConnection

from bus.amqp.connection import connect_plain
from bus.ops.status import collect
from bus.outbox import OutboxStore, open_outbox
from bus.topology.model import Subscriber, Topology
from bus.topology.model import load as load_topology
from bus.topology.plan import (
    QueueDecl,
    desired,
    is_delay_object,
)
from demo.processes import (
    Service,
    scrape,
    start_api,
    start_relay,
    start_service,
    stop_services,
    wait_ready,
)
from demo.shop import Shop
from demo.stubs import FlakyWarehouse, MailSink, WarehouseStats
from demo.topology import declare, delete, expected_handled, write_demo_topology

API_HANDLERS = "api."  # a subscriber whose handlers live in the API runs inside the API process
CHECKOUT = Path(__file__).resolve().parents[1]  # where subscribers/, api/ and demo/ are


@dataclass(frozen=True)
class DemoOptions:
    orders: int = 50
    rate: float = 20.0  # orders per second
    delays: tuple[str, ...] = ("1s", "2s", "4s")
    timeout: float = 45.0  # for the flow, once the services are ready
    keep: bool = False
    flaky: int = 3  # the warehouse answers this many first calls with 503
    prefix: str = "demo"
    workdir: Path = Path(".bus/demo")
    grace: float = 5.0  # for each service's drain on SIGTERM
    kill_relay: bool = False  # SIGKILL the relay half way and start a replacement
    follow_up: str = "3s"  # the email's delayed "how was your order?" (3d in production)


@dataclass(frozen=True)
class SubscriberView:
    name: str
    queue: str
    expected: int
    handled: int = 0  # outcome ok
    retried: int = 0  # handed to a retry queue
    parked: int = 0  # outcome dead
    duplicates: int = 0
    waiting: int = 0  # ready in the main queue now
    retrying: int = 0  # in its retry queues now

    @property
    def settled(self) -> bool:
        return self.handled + self.parked >= self.expected


@dataclass(frozen=True)
class Snapshot:
    elapsed: float
    orders: int
    published: int
    subscribers: tuple[SubscriberView, ...]
    mails: int
    warehouse: WarehouseStats
    outbox_pending: int = 0  # accepted orders whose event the relay has not published yet
    outbox_lag: float = 0.0  # age of the oldest of them, seconds
    follow_ups: int = 0  # delayed "how was your order?" mails delivered
    invoices: tuple[Path, ...] = ()  # PDF invoices written by invoicing

    @property
    def relayed(self) -> int:
        return self.published - self.outbox_pending

    @property
    def done(self) -> bool:
        return (
            self.published >= self.orders
            and all(s.settled for s in self.subscribers)
            and self.follow_ups >= self.orders
            and len(self.invoices) >= self.orders
        )


@dataclass
class Outcome:
    snapshot: Snapshot
    problems: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    api: dict[str, float] = field(default_factory=dict)  # response times, ms
    max_outbox_lag: float = 0.0
    relay_kills: int = 0
    follow_up: str = "3s"  # the delay of the follow-up mails

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        s = self.snapshot
        return {
            "ok": self.ok,
            "orders": s.orders,
            "published": s.published,
            "subscribers": {
                v.name: {
                    "expected": v.expected,
                    "handled": v.handled,
                    "retried": v.retried,
                    "parked": v.parked,
                    "duplicates": v.duplicates,
                }
                for v in s.subscribers
            },
            "mails": s.mails,
            "follow_ups": s.follow_ups,
            "invoices": len(s.invoices),
            "invoice_sample": str(s.invoices[0]) if s.invoices else None,
            "warehouse": asdict(s.warehouse),
            "api": self.api,
            "outbox": {
                "relayed": s.relayed,
                "pending": s.outbox_pending,
                "max_lag_seconds": round(self.max_outbox_lag, 3),
                "relay_kills": self.relay_kills,
            },
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
            "problems": self.problems,
        }


# -- the run ---------------------------------------------------------------------------------


@dataclass
class _Stage:
    """Everything that runs while orders flow, and how to read its state."""

    conn: AbstractConnection
    topology: Topology
    sink: MailSink
    warehouse: FlakyWarehouse
    client: httpx.AsyncClient
    invoice_dir: Path
    services: list[Service] = field(default_factory=list)  # subscribers, the API among them
    relays: list[Service] = field(default_factory=list)
    outbox: OutboxStore | None = None

    async def snapshot(self, start: float, orders: int, published: Callable[[], int]) -> Snapshot:
        """Queue depths, then each service's counts, then our own, then the outbox: an order
        is never seen handled before it is seen accepted, nor relayed before it is pending."""
        expected = expected_handled(self.topology, orders)
        states = {st.subscriber: st for st in await collect(self.conn, self.topology)}
        counts = await asyncio.gather(*(scrape(self.client, s) for s in self.services))
        views = []
        for s, c in zip(self.services, counts, strict=True):
            st = states[s.name]
            views.append(
                SubscriberView(
                    s.name, st.queue.name, expected[s.name],
                    handled=c.get("ok", 0), retried=c.get("retried", 0),
                    parked=c.get("dead", 0), duplicates=c.get("duplicate", 0),
                    waiting=st.queue.ready, retrying=sum(q.ready for q in st.retries),
                )
            )  # fmt: skip
        accepted = published()
        pending, lag = 0, 0.0
        if self.outbox is not None:
            status = await self.outbox.status(sample=0)
            pending, lag = min(status.pending, accepted), status.oldest_age_seconds
        invoices = tuple(sorted(self.invoice_dir.rglob("*.pdf")))
        return Snapshot(
            time.monotonic() - start, orders, accepted, tuple(views),
            self.sink.delivered, self.warehouse.stats(), pending, lag,
            self.sink.follow_ups, invoices,
        )  # fmt: skip


class Demo:
    """Runs the flow once. *say* gets progress lines, *on_tick* a snapshot every *tick* s."""

    def __init__(
        self,
        options: DemoOptions,
        *,
        url: str,
        topology: str,
        say: Callable[[str], None],
        on_tick: Callable[[Snapshot], None],
        tick: float = 0.25,
    ) -> None:
        self.o = options
        self.url = url
        self.source = topology
        self.say = say
        self.on_tick = on_tick
        self.tick = tick
        self.run_id = f"{int(time.time()) % 100000:05d}"
        self.timings: dict[str, float] = {}

    async def run(self) -> Outcome:
        """Set up, publish, watch, tear down. Raises BusError when the setup itself fails."""
        t0 = time.monotonic()
        conn = await connect_plain(self.url, "demo", timeout=5)
        try:
            topology = self._prepare()
            await delete(conn, topology)  # leftovers of an interrupted run
            await declare(conn, topology)
            queues = sum(
                isinstance(d, QueueDecl) and not is_delay_object(d) for d in desired(topology)
            )
            delays = " → ".join(self.o.delays)
            self.say(f"topology {topology.source}: {queues} queues under `{self.o.prefix}.`, "
                     f"retries {delays}")  # fmt: skip
            try:
                outcome = await self._with_peers(conn, topology, t0)
            finally:
                if self.o.keep:
                    self.say(f"kept the demo queues (--keep): BUS_TOPOLOGY={topology.source}")
                else:
                    await delete(conn, topology)
        finally:
            await conn.close()
        self.timings["total"] = time.monotonic() - t0
        outcome.timings = self.timings
        return outcome

    def _prepare(self) -> Topology:
        workdir = self.o.workdir
        if workdir.exists():
            shutil.rmtree(workdir)  # the demo's own directory: last run's stores and logs
        workdir.mkdir(parents=True)
        path = write_demo_topology(self.source, workdir, self.o.prefix, self.o.delays)
        return load_topology(path)

    def _env(self, stage: _Stage) -> dict[str, str]:
        w = self.o.workdir.resolve()
        return {
            **os.environ,
            "BUS_URL": self.url,
            "BUS_TOPOLOGY": str(Path(stage.topology.source).resolve()),
            "BUS_STORE_URL": f"sqlite:///{w}/processed.db",
            "BUS_OUTBOX_URL": f"sqlite:///{w}/outbox.db",  # the API's own database
            "ANALYTICS_DB_URL": f"sqlite:///{w}/analytics.db",
            "SMTP_URL": stage.sink.url,
            "EMAIL_FOLLOW_UP_DELAY": self.o.follow_up,
            "INVOICE_DIR": str(stage.invoice_dir.resolve()),
            "WAREHOUSE_URL": stage.warehouse.url,
            "BUS_GRACE_PERIOD": str(self.o.grace),
            "BUS_LOG_FORMAT": "text",
            # the services, the API and the stubs are this checkout's, not installed packages
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")])
            ),
        }

    async def _with_peers(self, conn: AbstractConnection, topology: Topology, t0: float) -> Outcome:
        sink = MailSink().start()
        warehouse = FlakyWarehouse(self.o.flaky).start()
        self.say(f"SMTP sink {sink.url}; warehouse {warehouse.url} "
                 f"(answers the first {self.o.flaky} calls with 503)")  # fmt: skip
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                stage = _Stage(conn, topology, sink, warehouse, client,
                               self.o.workdir / "invoices")  # fmt: skip
                try:
                    outcome = await self._services_and_flow(stage, t0)
                finally:
                    t1 = time.monotonic()
                    stopped = await stop_services([*stage.services, *stage.relays], self.o.grace)
                    self.timings["shutdown"] = time.monotonic() - t1
            outcome.problems += stopped
            return outcome
        finally:
            sink.stop()
            warehouse.stop()

    async def _services_and_flow(self, stage: _Stage, t0: float) -> Outcome:
        env = self._env(stage)
        embedded = [s.name for s in stage.topology.subscribers() if _in_api(s)]
        for name in stage.topology.subscriber_names:
            if name not in embedded:
                stage.services.append(await start_service(name, env, self.o.workdir))
        api = await start_api(env, self.o.workdir, embedded[0] if embedded else "orders")
        stage.services.append(api)
        await wait_ready([api], stage.client, timeout=30)  # it creates its tables and the outbox
        stage.outbox = await open_outbox(env["BUS_OUTBOX_URL"])
        try:
            stage.relays.append(await start_relay(env, self.o.workdir))
            await wait_ready([*stage.services, *stage.relays], stage.client, timeout=30)
            self.timings["startup"] = time.monotonic() - t0
            ports = ", ".join(f"{s.name} :{s.port}" for s in stage.services)
            relay = stage.relays[0].port
            self.say(f"services consuming (metrics {ports}); orders API http://127.0.0.1:"
                     f"{api.port}, relay :{relay}; logs in {self.o.workdir}/")  # fmt: skip
            return await self._flow(stage, env, f"http://127.0.0.1:{api.port}")
        finally:
            await stage.outbox.close()

    async def _flow(self, stage: _Stage, env: dict[str, str], api: str) -> Outcome:
        shop = Shop(api, self.run_id, self.o.orders, self.o.rate)
        kills = 0

        async def kill_relay() -> None:
            nonlocal kills
            victim = stage.relays.pop()
            victim.process.kill()  # SIGKILL: no drain, no hand-over of anything it held
            await victim.process.wait()
            kills += 1
            stage.relays.append(await start_relay(env, self.o.workdir, kills + 1))
            self.say(f"relay killed (SIGKILL) after {shop.accepted} orders; a new relay "
                     "takes over (SQLite: when the dead one's lease lapses, ≤5s)")  # fmt: skip

        start = time.monotonic()
        posting = asyncio.create_task(shop.run(kill_relay if self.o.kill_relay else None))
        max_lag = 0.0
        try:
            while True:
                snap = await stage.snapshot(start, self.o.orders, lambda: shop.accepted)
                max_lag = max(max_lag, snap.outbox_lag)
                self.on_tick(snap)
                problems = self._trouble(posting, shop, [*stage.services, *stage.relays])
                if snap.done or problems:
                    break
                if snap.elapsed > self.o.timeout:
                    late = f"{_behind(snap)} (service logs in {self.o.workdir}/)"
                    problems = [f"timed out after {self.o.timeout:.0f}s: {late}"]
                    break
                await asyncio.sleep(self.tick)
        finally:
            posting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await posting
        self.timings["flow"] = time.monotonic() - start
        problems += [
            f"{v.name} parked {v.parked} in {v.queue}.dlq" for v in snap.subscribers if v.parked
        ]
        if len(snap.invoices) < snap.orders:
            problems.append(f"{len(snap.invoices)} invoices for {snap.orders} orders")
        if snap.follow_ups < snap.orders:
            problems.append(f"{snap.follow_ups} follow-up mails for {snap.orders} orders")
        outcome = Outcome(snap, problems, api=shop.percentiles_ms(), relay_kills=kills,
                          follow_up=self.o.follow_up)  # fmt: skip
        outcome.max_outbox_lag = max_lag
        return outcome

    def _trouble(
        self, posting: asyncio.Task[None], shop: Shop, procs: Sequence[Service]
    ) -> list[str]:
        problems = [d for d in (s.died() for s in procs) if d]
        if posting.done() and not posting.cancelled() and posting.exception():
            exc = posting.exception()
            problems.append(f"orders stopped after {shop.accepted} of {self.o.orders}: {exc}")
        return problems


def _in_api(sub: Subscriber) -> bool:
    return sub.handlers.startswith(API_HANDLERS)


def _behind(snap: Snapshot) -> str:
    parts = [
        f"{v.name} handled {v.handled} of {v.expected} ({v.waiting} waiting, "
        f"{v.retrying} in retry, the rest delivered but not acked)"
        for v in snap.subscribers
        if not v.settled
    ]
    if snap.outbox_pending:
        parts.insert(0, f"{snap.outbox_pending} events still in the outbox")
    if snap.published < snap.orders:
        parts.insert(0, f"the API accepted {snap.published} of {snap.orders} orders")
    return "; ".join(parts) or "nothing missing"
