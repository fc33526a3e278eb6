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
