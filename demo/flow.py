"""`bus demo`: the whole flow on one machine.

A copy of the topology under a `demo.` prefix with short retry delays, a local SMTP sink and a
flaky warehouse, the services as real processes (`bus run NAME`), the orders API and a relay
as processes of their own, a stream of orders POSTed to the API as a shop's clients would (the
API writes each order and its `order.placed` into its own database, the relay publishes it),
and snapshots of what every service did, from its own /metrics. Beside it, the shop's till
places orders and cancels some at once (ordered fulfillment keeps each cancellation behind its
order), customers ask for refunds (the refunds saga, a stand-in payment provider that leaves some
unanswered, a timeout scaled down to seconds), and half way `bus topology apply` adds a `search`
subscriber that starts with the orders already in the history (`backfill`). The command line
renders the snapshots; this module only runs the flow and measures it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
from aio_pika.abc import AbstractConnection

from bus import Publisher
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
from demo import findings
from demo.processes import (
    Service,
    apply_topology,
    scrape,
    scrape_total,
    start_api,
    start_relay,
    start_service,
    stop_services,
    wait_ready,
)
from demo.shop import Shop, Till, request_refunds
from demo.stubs import FlakyWarehouse, MailSink
from demo.topology import Volumes, declare, delete, expected_handled, write_demo_topology
from demo.views import (
    OrderingView,
    Outcome,
    RefundsView,
    SearchView,
    Snapshot,
    SubscriberView,
    behind,
    problems_of,
)

__all__ = ["Demo", "DemoOptions", "Outcome", "Snapshot", "SubscriberView"]

API_HANDLERS = "api."  # a subscriber whose handlers live in the API runs inside the API process
CHECKOUT = Path(__file__).resolve().parents[1]  # where subscribers/, api/ and demo/ are
READY = 60.0  # seconds for the processes to start consuming (a loaded 2-core machine: ~20)
LATE = "search"  # the subscriber `bus topology apply` adds half way, with its backfill


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
    refund_timeout: str = "4s"  # the refund saga's timeout (3d in production)


# -- the run ---------------------------------------------------------------------------------


@dataclass
class _Stage:
    """Everything that runs while orders flow, and how to read its state."""

    conn: AbstractConnection
    topology: Topology  # what is declared now: `full` once search was added
    full: Topology
    volumes: Volumes
    sink: MailSink
    warehouse: FlakyWarehouse
    client: httpx.AsyncClient
    workdir: Path
    services: list[Service] = field(default_factory=list)  # subscribers, the API among them
    relays: list[Service] = field(default_factory=list)
    outbox: OutboxStore | None = None
    till: Till | None = None
    search: SearchView | None = None  # None: the topology has no `search` to add
    refunds: findings.Refunds | None = None

    async def snapshot(self, start: float, published: Callable[[], int]) -> Snapshot:
        """Queue depths, then each service's counts, then our own, then the outbox: an order
        is never seen handled before it is seen accepted, nor relayed before it is pending."""
        topology, services = self.topology, list(self.services)
        expected = expected_handled(topology, self.volumes)
        states = {st.subscriber: st for st in await collect(self.conn, topology)}
        counts = await asyncio.gather(*(scrape(self.client, s) for s in services))
        views = []
        for s, c in zip(services, counts, strict=True):
            st = states[s.name]
            views.append(
                SubscriberView(
                    s.name, st.queue.name, expected[s.name],
                    handled=c.get("ok", 0), retried=c.get("retried", 0),
                    parked=c.get("dead", 0), duplicates=c.get("duplicate", 0),
                    waiting=st.queue.ready, retrying=sum(q.ready for q in st.retries),
                )
            )  # fmt: skip
        till = len(self.till.order_ids) if self.till else 0
        accepted = published() + till
        pending, lag = 0, 0.0
        if self.outbox is not None:
            status = await self.outbox.status(sample=0)
            pending, lag = min(status.pending, accepted - till), status.oldest_age_seconds
        invoices = tuple(sorted((self.workdir / "invoices").rglob("*.pdf")))
        return Snapshot(
            time.monotonic() - start, self.volumes.orders, accepted, tuple(views),
            self.sink.delivered, self.warehouse.stats(), pending, lag,
            self.sink.follow_ups, invoices, till, await self._ordering(services),
            self._search(), await self._refunds(),
        )  # fmt: skip

    async def _ordering(self, services: Sequence[Service]) -> OrderingView:
        fulfillment = next((s for s in services if s.name == "fulfillment"), None)
        metric = 0.0
        if fulfillment is not None:
            metric = await scrape_total(self.client, fulfillment, "fulfillment_overtaken_total")
        cancelled = self.till.order_ids if self.till else []
        return findings.ordering(self.workdir / "fulfillment.db", cancelled, int(metric))

    def _search(self) -> SearchView | None:
        if self.search is None or not self.search.added:
            return self.search
        indexed, history, cancelled = findings.search_index(self.workdir / "search.db")
        return replace(self.search, indexed=indexed, from_history=history, cancelled=cancelled)

    async def _refunds(self) -> RefundsView:
        v = self.volumes
        if self.refunds is None:
            return RefundsView(requested=v.refunds, silent=v.silent)
        return await self.refunds.view(v.refunds, v.silent)


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
        self.volumes = Volumes.of(options.orders)

    async def run(self) -> Outcome:
        """Set up, publish, watch, tear down. Raises BusError when the setup itself fails."""
        t0 = time.monotonic()
        conn = await connect_plain(self.url, "demo", timeout=5)
        try:
            first, full = self._prepare()
            await delete(conn, full)  # leftovers of an interrupted run
            await declare(conn, first)
            queues = sum(
                isinstance(d, QueueDecl) and not is_delay_object(d) for d in desired(first)
            )
            delays = " → ".join(self.o.delays)
            self.say(f"topology {first.source}: {queues} queues under `{self.o.prefix}.`, "
                     f"retries {delays}")  # fmt: skip
            try:
                outcome = await self._with_peers(conn, first, full, t0)
            finally:
                if self.o.keep:
                    self.say(f"kept the demo queues (--keep): BUS_TOPOLOGY={full.source}")
                else:
                    await delete(conn, full)
        finally:
            await conn.close()
        self.timings["total"] = time.monotonic() - t0
        outcome.timings = self.timings
        return outcome

    def _prepare(self) -> tuple[Topology, Topology]:
        """The demo's topology as declared at the start (without `search`) and in full."""
        workdir = self.o.workdir
        if workdir.exists():
            shutil.rmtree(workdir)  # the demo's own directory: last run's stores and logs
        workdir.mkdir(parents=True)
        full = load_topology(write_demo_topology(self.source, workdir, self.o.prefix,
                                                 self.o.delays))  # fmt: skip
        if LATE not in full.subscriber_names:
            return full, full
        first = write_demo_topology(
            self.source, workdir, self.o.prefix, self.o.delays,
            leave_out=[LATE], name="topology-before-search.yaml",
        )  # fmt: skip
        return load_topology(first), full

    def _env(self, stage: _Stage) -> dict[str, str]:
        w = self.o.workdir.resolve()
        v = self.volumes
        return {
            **os.environ,
            "BUS_URL": self.url,
            "BUS_TOPOLOGY": str(Path(stage.full.source).resolve()),
            "BUS_STORE_URL": f"sqlite:///{w}/processed.db",
            "BUS_OUTBOX_URL": f"sqlite:///{w}/outbox.db",  # the API's own database
            "ANALYTICS_DB_URL": f"sqlite:///{w}/analytics.db",
            "FULFILLMENT_DB_URL": f"sqlite:///{w}/fulfillment.db",
            "SEARCH_DB_URL": f"sqlite:///{w}/search.db",
            "SMTP_URL": stage.sink.url,
            "EMAIL_FOLLOW_UP_DELAY": self.o.follow_up,
            "REFUND_TIMEOUT": self.o.refund_timeout,
            "PAYMENTS_SILENT": ",".join(refund_ids(self.run_id, v.refunds)[v.refunds - v.silent :]),
            "INVOICE_DIR": str((w / "invoices").resolve()),
            "WAREHOUSE_URL": stage.warehouse.url,
            "BUS_GRACE_PERIOD": str(self.o.grace),
            "BUS_LOG_FORMAT": "text",
            # the services, the API and the stubs are this checkout's, not installed packages
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")])
            ),
        }

    async def _with_peers(
        self, conn: AbstractConnection, first: Topology, full: Topology, t0: float
    ) -> Outcome:
        sink = MailSink().start()
        warehouse = FlakyWarehouse(self.o.flaky).start()
        self.say(f"SMTP sink {sink.url}; warehouse {warehouse.url} "
                 f"(answers the first {self.o.flaky} calls with 503)")  # fmt: skip
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                stage = _Stage(conn, first, full, self.volumes, sink, warehouse, client,
                               self.o.workdir)  # fmt: skip
                if LATE in full.subscriber_names:
                    stage.search = SearchView()
                try:
                    outcome = await self._services_and_flow(stage, t0)
                finally:
                    t1 = time.monotonic()
                    stopped = await stop_services([*stage.services, *stage.relays], self.o.grace)
                    if stage.refunds is not None:
                        await stage.refunds.close()
                    self.timings["shutdown"] = time.monotonic() - t1
            outcome.problems += stopped
            return outcome
        finally:
            sink.stop()
            warehouse.stop()

    async def _services_and_flow(self, stage: _Stage, t0: float) -> Outcome:
        env = self._env(stage)
        embedded = [s.name for s in stage.topology.subscribers() if _in_api(s)]
        # the API first: it is waited for first (it creates its tables and the outbox)
        api = await start_api(env, self.o.workdir, embedded[0] if embedded else "orders")
        for name in stage.topology.subscriber_names:
            if name not in embedded:
                stage.services.append(await start_service(name, env, self.o.workdir))
        stage.services.append(api)
        await wait_ready([api], stage.client, timeout=READY)
        stage.outbox = await open_outbox(env["BUS_OUTBOX_URL"])
        try:
            stage.relays.append(await start_relay(env, self.o.workdir))
            await wait_ready([*stage.services, *stage.relays], stage.client, timeout=READY)
            if "refunds" in stage.topology.subscriber_names:
                stage.refunds = await findings.Refunds.open(env["BUS_STORE_URL"])
            self.timings["startup"] = time.monotonic() - t0
            ports = ", ".join(f"{s.name} :{s.port}" for s in stage.services)
            relay = stage.relays[0].port
            self.say(f"services consuming (metrics {ports}); orders API http://127.0.0.1:"
                     f"{api.port}, relay :{relay}; logs in {self.o.workdir}/")  # fmt: skip
            return await self._flow(stage, env, f"http://127.0.0.1:{api.port}")
        finally:
            await stage.outbox.close()

    async def _flow(self, stage: _Stage, env: dict[str, str], api: str) -> Outcome:
        v = self.volumes
        shop = Shop(api, self.run_id, v.orders - v.cancelled, self.o.rate)
        publisher = await Publisher(self.url, stage.full, source="demo-shop").connect()
        stage.till = Till(publisher, self.run_id)
        extra: list[asyncio.Task[None]] = []  # what half way starts beside the orders
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

        async def halfway() -> None:
            if self.o.kill_relay:
                await kill_relay()
            if stage.refunds is not None and v.refunds:
                extra.append(asyncio.create_task(self._request_refunds(publisher, shop)))
            if stage.search is not None:  # the shop waits: what came before is history
                await self._add_search(stage, env, shop)

        start = time.monotonic()
        max_lag = 0.0
        posting: asyncio.Task[None] | None = None
        try:
            if "order.cancelled" in stage.topology.events and v.cancelled:
                await stage.till.place_and_cancel(v.cancelled)
                self.say(f"till: {v.cancelled} orders placed and cancelled at once (each "
                         "order.cancelled published right behind its order.placed)")  # fmt: skip
            posting = asyncio.create_task(shop.run(halfway))
            while True:
                snap = await stage.snapshot(start, lambda: shop.accepted)
                max_lag = max(max_lag, snap.outbox_lag)
                self.on_tick(snap)
                problems = self._trouble([posting, *extra], shop,
                                         [*stage.services, *stage.relays])  # fmt: skip
                if snap.done or problems:
                    break
                if snap.elapsed > self.o.timeout:
                    late = f"{behind(snap)} (service logs in {self.o.workdir}/)"
                    problems = [f"timed out after {self.o.timeout:.0f}s: {late}"]
                    break
                await asyncio.sleep(self.tick)
        finally:
            for task in [*extra, *([posting] if posting else [])]:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await publisher.close()
        self.timings["flow"] = time.monotonic() - start
        problems += problems_of(snap)
        outcome = Outcome(snap, problems, api=shop.percentiles_ms(), relay_kills=kills,
                          follow_up=self.o.follow_up,
                          refund_timeout=self.o.refund_timeout)  # fmt: skip
        outcome.max_outbox_lag = max_lag
        return outcome

    async def _request_refunds(self, publisher: Publisher, shop: Shop) -> None:
        v = self.volumes
        await request_refunds(publisher, self.run_id, dict(shop.order_ids), v.refunds)
        self.say(f"customers asked for {v.refunds} refunds (refund.requested); the payment "
                 f"provider will leave {v.silent} unanswered, so the refund saga's timeout "
                 f"({self.o.refund_timeout} here, 3d in production) compensates")  # fmt: skip

    async def _add_search(self, stage: _Stage, env: dict[str, str], shop: Shop) -> None:
        """`bus topology apply` with `search` (its queue is new: apply backfills it from the
        history), then its service (not waited for: it catches up while orders go on)."""
        assert stage.search is not None and stage.till is not None
        after = shop.accepted + len(stage.till.order_ids)
        path = Path(stage.full.source)
        out = await apply_topology(env, path, self.o.workdir / "apply-search.log")
        found = re.search(rf"backfill {LATE}: copied (\d+) events", out)
        copied = int(found.group(1)) if found else 0
        stage.topology = stage.full
        stage.search = replace(stage.search, added=True, added_after=after, backfilled=copied)
        service = await start_service(LATE, env, self.o.workdir)
        stage.services.append(service)
        self.say(f"search added after {after} orders: `bus topology apply` created its queue and "
                 f"copied {copied} events of the history into it (backfill); "
                 "its service starts, the shop goes on")  # fmt: skip

    def _trouble(
        self, tasks: Sequence[asyncio.Task[None]], shop: Shop, procs: Sequence[Service]
    ) -> list[str]:
        problems = [d for d in (s.died() for s in procs) if d]
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception():
                exc = task.exception()
                what = "orders stopped after " if task is tasks[0] else "half way, after "
                problems.append(f"{what}{shop.accepted} of {shop.orders} orders: {exc}")
        return problems


def refund_ids(run_id: str, count: int) -> list[str]:
    return [f"rf-{run_id}-{n + 1:02d}" for n in range(count)]


def _in_api(sub: Subscriber) -> bool:
    return sub.handlers.startswith(API_HANDLERS)
