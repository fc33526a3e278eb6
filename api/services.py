"""What the API runs while it serves: its database, its orders, its embedded subscriber.

`Services.start(...)` opens the database and creates its tables (idempotent), then starts the
`orders` subscriber in the background; `close()` drains and closes everything in reverse.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from api.db import create_schema, open_engine
from api.progress import make_router
from api.repository import Orders
from api.settings import SOURCE, SUBSCRIBER, ApiSettings
from api.supervisor import Supervisor
from bus.consume.runtime import Runtime
from bus.outbox import Outbox
from bus.stores import Store, open_store
from bus.topology.model import Topology
from bus.topology.model import load as load_topology

log = logging.getLogger(__name__)


class Subscription:
    """Builds the embedded `orders` runtime for each start attempt; one store for all."""

    def __init__(self, settings: ApiSettings, topology: Topology, orders: Orders) -> None:
        self.settings = settings
        self.topology = topology
        self.orders = orders
        self.store: Store | None = None

    async def _orders(self) -> Orders:
        return self.orders

    async def make(self) -> Runtime:
        if self.store is None:
            self.store = await open_store(self.settings.bus.store_url)
        return Runtime(
            self.topology, SUBSCRIBER, make_router(self._orders), url=self.settings.bus.url,
            store=self.store,
        )  # fmt: skip

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()
            self.store = None


@dataclass
class Services:
    settings: ApiSettings
    engine: AsyncEngine
    orders: Orders
    supervisor: Supervisor | None
    subscription: Subscription | None

    @classmethod
    async def start(
        cls,
        settings: ApiSettings,
        *,
        topology: Topology | None = None,
        outbox: Outbox | None = None,
    ) -> Services:
        """Open the database, create its tables, start the subscriber (in the background)."""
        topology = topology or load_topology(settings.bus.topology)
        engine = open_engine(settings.database_url)
        try:
            await create_schema(engine)
        except BaseException:
            await engine.dispose()
            raise
        orders = Orders(engine, outbox or Outbox(topology, source=SOURCE))
        supervisor = subscription = None
        if settings.subscribe and SUBSCRIBER in topology.spec.subscribers:
            subscription = Subscription(settings, topology, orders)
            supervisor = Supervisor(subscription.make, name=SUBSCRIBER)
            supervisor.start()
        elif settings.subscribe:
            log.warning("topology %s declares no subscriber %r: order progress stays at "
                        "'published'", topology.source, SUBSCRIBER)  # fmt: skip
        return cls(settings, engine, orders, supervisor, subscription)

    async def close(self) -> None:
        try:
            if self.supervisor is not None:
                await self.supervisor.stop(self.settings.grace)
            if self.subscription is not None:
                await self.subscription.close()
        finally:
            await self.engine.dispose()
