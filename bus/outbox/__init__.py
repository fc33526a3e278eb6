"""The transactional outbox: events written with the producer's data, relayed afterwards."""

from bus.outbox.writer import Outbox

__all__ = ["Outbox"]
