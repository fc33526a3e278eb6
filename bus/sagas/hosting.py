"""A subscriber's sagas, hosted: the saga store beside its store, the host, and (for a
durable store) the relay of the steps' outbox rows and the timeout sender."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bus.metrics import Metrics
from bus.outbox.writer import Outbox
from bus.sagas import open_saga_store, outbox_url_of
from bus.sagas.effects import Effects
from bus.sagas.host import SagaHost, Sends
from bus.sagas.saga import Check, Saga
from bus.topology.model import Topology


class Hosted:
    """`host` goes to the dispatcher; `close()` once the consumer has drained."""

    def __init__(self, host: SagaHost, effects: Effects | None) -> None:
        self.host = host
        self.effects = effects

    async def close(self) -> None:
        if self.effects is not None:
            await self.effects.stop()
        await self.host.store.close()


async def host_sagas(
    subscriber: str,
    sagas: Sequence[Saga[Any]],
    store: Any,
    *,
    topology: Topology,
    url: str,
    check: Check,
    sends: Sends,
    metrics: Metrics,
    retention: float,
    reconnect_interval: float = 1.0,
) -> Hosted:
    """Open the saga store in *store*'s database and start relaying what steps commit."""
    saga_store = await open_saga_store(store, Outbox(topology, source=subscriber))
    host = SagaHost(subscriber, sagas, saga_store, check, sends=sends, metrics=metrics)
    outbox_url = outbox_url_of(store)
    effects = None
    if saga_store.durable and outbox_url is not None:
        effects = Effects(
            host, outbox_url=outbox_url, topology=topology, url=url, sends=sends,
            metrics=metrics, retention=retention, reconnect_interval=reconnect_interval,
        )  # fmt: skip
        try:
            await effects.start()
        except BaseException:
            await saga_store.close()
            raise
    return Hosted(host, effects)
