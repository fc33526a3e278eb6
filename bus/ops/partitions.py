"""An ordered subscriber's partitions as an operator sees them: depth, the active consumer and
its held keys.

AMQP tells how many consumers a queue has, not which one is active, and a held key lives in the
memory of the process that holds it. So the active consumer of each partition writes a report
every few seconds (`bus.ordering.reporter`) into a one-message record queue, and `bus status`
reads the newest one.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from aio_pika.abc import AbstractConnection

from bus.amqp.plumbing import read_record
from bus.ops.status import QueueState, queue_state
from bus.topology.model import Subscriber

REPORT_EVERY = 5.0  # seconds between an active consumer's reports


@dataclass(frozen=True)
class HeldKey:
    key: str
    held_by: str  # the id of the event on the retry ladder
    since: float  # epoch seconds
    aside: int  # its later events going round the hold queue


@dataclass(frozen=True)
class PartitionReport:
    """What the active consumer of one partition says about it."""

    partition: str
    owner: str  # host and process of the active consumer
    at: float  # epoch seconds
    held: list[HeldKey] = field(default_factory=list)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, body: bytes) -> PartitionReport | None:
        try:
            raw = json.loads(body)
            held = [HeldKey(**h) for h in raw.get("held", [])]
            return cls(str(raw["partition"]), str(raw["owner"]), float(raw["at"]), held)
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class PartitionState:
    queue: QueueState
    hold: QueueState
    owner: str | None  # the active consumer's last report, if fresh
    report_age: float | None
    held: list[HeldKey]

    @property
    def oldest_hold_seconds(self) -> float:
        return max((time.time() - h.since for h in self.held), default=0.0)


async def partition_states(conn: AbstractConnection, sub: Subscriber) -> list[PartitionState]:
    out = []
    for i, name in enumerate(sub.partition_queues):
        queue = await queue_state(conn, name)
        hold = await queue_state(conn, sub.hold_queue(i))
        body = await read_record(conn, sub.partition_report_queue(i))
        report = PartitionReport.from_json(body) if body else None
        # a report older than three rounds is a replica that stopped, or an idle partition
        fresh = report is not None and time.time() - report.at < 3 * REPORT_EVERY
        out.append(
            PartitionState(
                queue, hold,
                owner=report.owner if report and fresh and queue.consumers else None,
                report_age=time.time() - report.at if report else None,
                held=report.held if report and fresh else [],
            )
        )  # fmt: skip
    return out
