"""Re-declare a DLQ with new arguments, keeping every message it holds.

A queue's arguments cannot change once declared, and a policy (which can) needs the management
API, which the bus does not use. So `bus topology apply` moves the DLQ's messages into a holding
queue `<dlq>.moving` (declared like the new DLQ), deletes the DLQ once it is empty, declares it
again and moves the messages back, each one published with a confirm before it is acked from
where it was: a crash at any point leaves every message in one of the two queues (at worst
twice: the same id, which a replay's idempotency store absorbs), and the next `apply` finishes
the move. Headers and properties travel unchanged, `x-death` included.

While the DLQ is away, a message the subscriber parks (or the broker dead-letters) would have
nowhere to go, so the move is refused while the subscriber's queue has consumers.
"""

from __future__ import annotations

import logging

import aiormq
from aio_pika.abc import AbstractConnection
from aiormq.abc import AbstractChannel as RawChannel

from bus.amqp.plumbing import queue_counts, scratch_channel
from bus.topology.plan import QueueDecl

log = logging.getLogger(__name__)

HOLD_SUFFIX = ".moving"


def holding_queue(dlq: str) -> str:
    return f"{dlq}{HOLD_SUFFIX}"


async def redeclare_keeping(conn: AbstractConnection, decl: QueueDecl, main_queue: str) -> str:
    """Re-declare *decl* (a DLQ) with its arguments, its messages kept; returns what was done
    (one line). Refuses (NotMigrated) while *main_queue* has consumers."""
    main = await queue_counts(conn, main_queue)
    if main is not None and main.consumers:
        raise NotMigrated(
            f"queue {decl.name} not re-declared: {main_queue} has {main.consumers} consumer(s); "
            "stop the subscriber, run `bus topology apply` again, then start it"
        )
    hold = holding_queue(decl.name)
    async with scratch_channel(conn, confirms=True) as channel:
        raw = await channel.get_underlay_channel()
        await raw.queue_declare(hold, durable=True, arguments=dict(decl.arguments))
        moved = 0
        while True:  # until the DLQ stays empty: `bus dlq` may still put something back
            moved += await _move(raw, decl.name, hold)
            left = await raw.queue_declare(decl.name, passive=True)
            if not left.message_count:
                break
        await raw.queue_delete(decl.name)
        await raw.queue_declare(decl.name, durable=True, arguments=dict(decl.arguments))
    back = await restore(conn, decl)
    log.info("re-declared %s: %d messages moved aside, %d back", decl.name, moved, back)
    return f"re-declared queue {decl.name}; its {back} messages kept"


async def restore(conn: AbstractConnection, decl: QueueDecl) -> int:
    """Move what a (possibly interrupted) migration left in the holding queue back into the
    DLQ, then delete the holding queue; returns how many came back (0 when there is none)."""
    hold = holding_queue(decl.name)
    if await queue_counts(conn, hold) is None:
        return 0
    async with scratch_channel(conn, confirms=True) as channel:
        raw = await channel.get_underlay_channel()
        back = await _move(raw, hold, decl.name)
        left = await raw.queue_declare(hold, passive=True)
        if not left.message_count:
            await raw.queue_delete(hold)
    return back


async def _move(raw: RawChannel, source: str, target: str) -> int:
    """Every message of *source*, in order, to *target*: published with a confirm, then acked."""
    moved = 0
    while True:
        got = await raw.basic_get(source, no_ack=False)
        if got.delivery_tag is None:  # Basic.GetEmpty
            return moved
        confirmed = await raw.basic_publish(
            got.body, routing_key=target, properties=got.header.properties, mandatory=True,
            timeout=30,
        )  # fmt: skip
        if not isinstance(confirmed, aiormq.spec.Basic.Ack):
            raise NotMigrated(f"moving a message from {source} to {target}: {confirmed!r}")
        await raw.basic_ack(got.delivery_tag)
        moved += 1


class NotMigrated(Exception):
    """A DLQ could not be re-declared now; its messages are where they were (or held)."""
