"""`SyncPublisher`: connecting again after a failed first attempt really connects."""

from __future__ import annotations

import pytest

from bus.errors import BrokerUnavailable
from bus.produce.publisher import Publisher
from bus.produce.sync import SyncPublisher
from bus.topology.model import from_dict

TOPOLOGY = from_dict(
    {
        "version": 1,
        "exchanges": {"shop.events": {"type": "topic"}},
        "events": {"order.placed": {"exchange": "shop.events"}},
        "subscribers": {},
    },
    source="test",
)


class FlakyPublisher(Publisher):
    """Its first connect fails (the broker is not up yet), the next ones succeed."""

    def __init__(self) -> None:
        super().__init__("amqp://unused", TOPOLOGY)
        self.attempts = 0

    async def connect(self) -> FlakyPublisher:
        self.attempts += 1
        if self.attempts == 1:
            raise BrokerUnavailable("cannot reach RabbitMQ at amqp://unused")
        return self

    async def close(self) -> None:
        pass


def test_connect_after_a_failed_first_connect_connects() -> None:
    inner = FlakyPublisher()
    pub = SyncPublisher(inner)
    try:
        with pytest.raises(BrokerUnavailable):
            pub.connect()
        pub.connect()  # used to return at once: the loop's thread had started
        assert inner.attempts == 2
        pub.connect()  # connected now: nothing more to do
        assert inner.attempts == 2
    finally:
        pub.close()
