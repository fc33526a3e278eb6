"""Every few seconds, report each partition this process is active on: who, and its held keys.

`bus status` reads the reports (`bus.ops.partitions`); each goes into the partition's
one-message record queue, so a report replaces the previous one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time

from aio_pika.abc import AbstractConnection

from bus.amqp.plumbing import write_record
from bus.ops.partitions import REPORT_EVERY, HeldKey, PartitionReport
from bus.ordering.intake import Intake
from bus.topology.model import Subscriber

log = logging.getLogger(__name__)


class Reporter:
    def __init__(
        self, sub: Subscriber, intake: Intake, conn: AbstractConnection,
        every: float = REPORT_EVERY,
    ) -> None:  # fmt: skip
        self.sub = sub
        self.intake = intake
        self.conn = conn
        self.every = every
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def report(self) -> None:
        index = {q: i for i, q in enumerate(self.sub.partition_queues)}
        holds = self.intake.holds()
        for queue in self.intake.active():
            held = [HeldKey(h.key, h.held_by, h.since, h.aside) for h in holds.get(queue, [])]
            report = PartitionReport(queue, self.owner, time.time(), held)
            await write_record(
                self.conn, self.sub.partition_report_queue(index[queue]), report.to_json(),
                content_type="application/json",
            )  # fmt: skip

    async def _forever(self) -> None:
        while True:
            try:
                await self.report()
            except Exception as exc:  # a broker outage: the next round tries again
                log.debug("partition report failed: %s", exc)
            await asyncio.sleep(self.every)
