"""What a change of `partitions` or `partitioner` moves, and whether `apply` may make it now.

A key's partition is `crc32(key) % N`, whoever computes it: with another N most keys land in
another partition. An event of a moved key still queued in its old partition could then run
beside, or after, a later event of the key in its new one. A change of partitioner moves no key,
but from `bus` to `exchange` an event still waiting in the subscriber's queue would be overtaken
by later ones of its key routed straight to the partition. So either change is made only while
the subscriber holds no events: its queue, partitions, hold and retry queues all empty.
"""

from __future__ import annotations

from dataclasses import dataclass

from bus.topology.diff import Observed
from bus.topology.model import Topology
from bus.topology.ordering import Partitioner, partition_of
from bus.topology.plan import ExchangeDecl, QueueDecl, Role


@dataclass(frozen=True, slots=True)
class Repartition:
    """Subscriber *name* goes from *before* to *after* partitions."""

    name: str
    before: int
    after: int
    busy: tuple[tuple[str, int], ...]  # its queues that hold messages, with how many
    partitioner: tuple[Partitioner, Partitioner] = (Partitioner.BUS, Partitioner.BUS)

    @property
    def moved_share(self) -> float:
        """The share of keys whose partition changes (estimated on 10,000 keys)."""
        before, after = max(self.before, 1), max(self.after, 1)
        keys = [f"k{i}" for i in range(10_000)]
        moved = sum(partition_of(k, before) != partition_of(k, after) for k in keys)
        return moved / len(keys)

    def line(self) -> str:
        old, new = self.partitioner
        changes = []
        if self.before != self.after:
            changes.append(f"partitions of {self.name}: {self.before} -> {self.after}")
        if old is not new:
            changes.append(f"partitioner of {self.name}: {old} -> {new}")
        moved = f"about {self.moved_share:.0%} of keys move to another partition"
        text = f"~ {'; '.join(changes)}; {moved}"
        if self.busy:
            held = ", ".join(f"{q} ({n})" for q, n in self.busy)
            text += f"; apply waits until these are empty: {held}"
        return text

    def refusal(self) -> str:
        held = ", ".join(f"{q} ({n})" for q, n in self.busy)
        old, new = self.partitioner
        what = f"partitions of {self.name} change {self.before} -> {self.after}"
        if old is not new:
            what = f"the partitioner of {self.name} changes {old} -> {new}"
            if self.before == self.after:
                return (
                    f"{what} while it still holds events ({held}): an event waiting in its "
                    "queue could be overtaken by a later one of its key. Let its replicas drain "
                    "them (pause the producers: their events wait in their outbox), apply "
                    "again, then restart the replicas with the new file"
                )
        return (
            f"{what} while it still "
            f"holds events ({held}): keys would change partition under queued events and lose "
            "their order. Let its replicas drain them (pause the producers: their events "
            "wait in their outbox), apply again, then restart the replicas with the new file"
        )


def repartitions(topology: Topology, seen: Observed) -> list[Repartition]:
    """Ordered subscribers whose partition count differs from what the last apply made."""
    out = []
    for sub in topology.subscribers():
        before = sum(
            1 for d in seen.recorded
            if isinstance(d, QueueDecl) and d.owner == sub.name and d.role is Role.PARTITION
            and d.name in seen.queues
        )  # fmt: skip
        by_exchange = any(
            isinstance(d, ExchangeDecl) and d.owner == sub.name and d.name in seen.exchanges
            for d in seen.recorded
        )
        was = Partitioner.EXCHANGE if by_exchange else Partitioner.BUS
        now = sub.partitioner if sub.ordered else Partitioner.BUS
        if (before == sub.partitions and was is now) or (
            before == 0 and sub.queue not in seen.queues
        ):
            continue
        mine = [d.name for d in seen.recorded if isinstance(d, QueueDecl) and d.owner == sub.name]
        names = dict.fromkeys([sub.queue, *sub.retry_queues, *mine])
        busy = tuple((q, seen.queues[q]) for q in names if seen.queues.get(q))
        out.append(Repartition(sub.name, before, sub.partitions, busy, (was, now)))
    return out
