"""Spreading an ordered subscriber's partitions over its replicas.

A partition queue has one active consumer: the first replica that subscribed. Started one after
another, the first replica would be active on every partition and the others would stand by.
So each replica, every few seconds, compares the partitions it is active on with its fair share,
`ceil(partitions / replicas)` (replicas: the most consumers any partition queue has), and when
it is over, hands one partition on:

1. it stops admitting the partition's deliveries (they stay unacknowledged, in hand),
2. waits until nothing of the partition runs, waits its turn or is being sent round a lap,
   and its acks are written,
3. closes the partition's channel: the broker returns the deliveries in hand, in place, and
   makes the next consumer active in the same step,
4. subscribes again on a new channel, at the end of the line of standby consumers.

Order holds as in a takeover (see `bus.ordering.intake`): nothing of the partition was in flight,
and the new owner reads the holds and laps from the store and the hold queue.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

BALANCE_EVERY = 2.0  # seconds between two looks
QUIET_WITHIN = 10.0  # seconds a partition may take to go quiet before the hand-over is dropped


def fair_share(partitions: int, replicas: int) -> int:
    return math.ceil(partitions / max(replicas, 1))


def to_hand_on(
    active: Sequence[str], partitions: int, replicas: int, held: Mapping[str, int]
) -> str | None:
    """The partition to hand on, or None when this replica is within its fair share: of the
    ones it is active on, the one with the fewest held keys (the new owner has less to wait
    for), the last such in order."""
    if len(active) <= fair_share(partitions, replicas):
        return None
    return min(reversed(active), key=lambda q: held.get(q, 0))
