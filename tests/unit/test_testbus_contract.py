"""The bus contract (tests/bus_contract.py) on `TestBus`: in memory, no broker."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bus.consume.router import Router
from bus.testing import Handled, Parked, TestBus
from bus.topology.model import from_dict
from tests.bus_contract import BusContract, OpenBus


class InMemoryDriver:
    def __init__(self, tb: TestBus) -> None:
        self.tb = tb

    async def publish(self, event_type: str, data: Any, *, id: str | None = None) -> str:
        return await self.tb.publish(event_type, data, id=id)

    async def settle(self) -> None:
        await self.tb.settle()

    def handled(self, subscriber: str) -> list[Handled]:
        return self.tb.handled(subscriber)

    def parked(self, subscriber: str) -> list[Parked]:
        return self.tb.parked(subscriber)

    def duplicate_count(self, subscriber: str) -> int:
        return len(self.tb.duplicates(subscriber))


@contextlib.asynccontextmanager
async def open_testbus(
    doc: dict[str, Any], routers: dict[str, Router]
) -> AsyncIterator[InMemoryDriver]:
    async with TestBus(from_dict(doc, source="contract"), routers) as tb:
        yield InMemoryDriver(tb)


class TestTestBusContract(BusContract):
    @pytest.fixture
    def open_bus(self) -> OpenBus:
        return open_testbus
