"""`serve` (bus run): whatever ends it, a started runtime is stopped (no broker)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bus import Router
from bus.consume import service
from bus.settings import Settings


class FakeRuntime:
    stopped: list[float] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.ready = False

    async def start(self) -> None:
        self.ready = True

    async def stop(self, grace: float) -> bool:
        FakeRuntime.stopped.append(grace)
        return True


class PortTaken:
    def __init__(self, *args: Any, **kwargs: Any) -> None: ...

    def start(self) -> None:
        raise OSError(98, "Address already in use")


async def test_a_runtime_started_is_stopped_when_what_follows_its_start_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FakeRuntime.stopped = []

    async def no_check(*args: Any) -> None: ...

    monkeypatch.setattr(service, "Runtime", FakeRuntime)
    monkeypatch.setattr(service, "HealthServer", PortTaken)
    monkeypatch.setattr(service, "_require_queue", no_check)
    monkeypatch.setattr(service, "import_router", lambda spec: Router())
    settings = Settings(topology="topology/topology.yaml")
    with pytest.raises(OSError, match="in use"):
        await service.serve("email", settings, metrics_port=9, stop=asyncio.Event(), grace=3.0)
    assert FakeRuntime.stopped == [3.0], "the runtime was left consuming"


def test_metric_labels_take_only_declared_event_types(tmp_path: Any) -> None:
    from prometheus_client import CollectorRegistry

    from bus.consume.runtime import Runtime
    from bus.metrics import Metrics
    from bus.stores import MemoryStore
    from bus.topology.model import load

    registry = CollectorRegistry()
    runtime = Runtime(
        load("topology/topology.yaml"), "email", Router(), url="amqp://x", store=MemoryStore(),
        metrics=Metrics(registry),
    )  # fmt: skip
    runtime._count("order.placed", "ok")
    for i in range(50):  # a bad producer: a new type per message
        runtime._count(f"junk.{i}", "dead")
        runtime._observe(f"junk.{i}", 0.01)
    types = {s.labels["type"] for m in registry.collect() for s in m.samples if "type" in s.labels}
    assert types == {"order.placed", "undeclared"}, sorted(types)
