"""Per key, one event at a time in publish order, and a durable hold while one of them retries.

Pure state of one process's partitions. Every event carries its sequence number (`bus-seq`,
stamped by the partitioner: later events of a key have larger numbers). For each delivery
`admit` answers:

- `RUN`: nothing of its key is running or held, and no earlier event of its key is out on a
  hold lap: the shell runs it.
- `WAIT`: an earlier event of its key is running: the gate keeps it until that one is `done`.
- `ASIDE`: its key is held (an earlier event is on the retry ladder), or an earlier event of
  its key is out on a hold lap, or the gate is still *calm* after a takeover: the shell sends it
  round the partition's hold queue.

`done` reports how an event ended and returns the next event of its key to run, and the events
that must step aside (because the event went to retry, the key is now held by it). Nothing
waits unacknowledged while a key is held: its events go round the hold queue (a short TTL back
to the partition) until the event that holds the key comes back from its retry queue and
succeeds or parks.

Laps do not keep order by themselves: an event that comes back and is sent round again goes
behind its key's later events still in the hold queue. So the gate keeps the sequence numbers
of its key's events out on a lap, and an event runs only when none of them is earlier: a later
one that comes back first takes another lap.

After a takeover the previous owner's laps are out too, and this gate has not seen them. So a
new gate that may have laps out starts *calm*: every event but a held key's own retry takes a
lap, which makes every lap still out one of this gate's, until the shell sees its sentinel come
back round the hold queue (`settle`): first in, first out, every lap of the previous owner came
back before it.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

T = TypeVar("T")


class Verdict(Enum):
    RUN = "run"
    WAIT = "wait"
    ASIDE = "aside"


class Ended(Enum):
    """How an event of an ordered key ended."""

    DONE = "done"  # acked, parked or a duplicate: the key goes on with its next event
    RETRY = "retry"  # sent to a retry queue (or back to the queue): the key is held by it


@dataclass(order=True)
class _Waiting(Generic[T]):
    seq: int
    event_id: str = field(compare=False)
    item: T = field(compare=False)


@dataclass
class _Key(Generic[T]):
    running: bool = False
    waiting: list[_Waiting[T]] = field(default_factory=list)  # by sequence number
    held_by: str | None = None  # the id of the event on the retry ladder
    held_since: float = 0.0
    out: dict[int, int] = field(default_factory=dict)  # sequence numbers out on a lap: copies

    def earliest_out(self) -> int | None:
        return min(self.out) if self.out else None


@dataclass(frozen=True, slots=True)
class Hold:
    """A held key, for `bus status` and the metrics."""

    key: str
    held_by: str
    since: float
    aside: int


class Gate(Generic[T]):
    """Admits events of each key one at a time, by sequence number; `T` is whatever the shell
    keeps (a delivery).

    *tag* names this gate's laps and sentinel. *held*: keys held when the gate starts, from the
    store. *calm*: laps of a previous owner may still be out; every fresh event takes a lap
    until `settle()`.
    """

    def __init__(
        self, tag: str = "", *, held: Iterable[tuple[str, str, float]] = (), calm: bool = False
    ) -> None:
        self.tag = tag
        self.calm = calm
        self._keys: dict[str, _Key[T]] = {}
        for key, event_id, since in held:
            self._keys[key] = _Key(held_by=event_id, held_since=since)

    def settle(self) -> None:
        """Every lap of the previous owner has come back: order by sequence numbers alone."""
        self.calm = False

    def admit(self, key: str, event_id: str, seq: int, item: T) -> Verdict:
        """What to do with *item*, the event *event_id* of *key* with sequence number *seq*."""
        k = self._keys.get(key)
        if k is None:
            k = self._keys[key] = _Key()
        copies = k.out.get(seq)
        if copies:  # back from one of our laps (or returned unsent): no longer out
            if copies == 1:
                del k.out[seq]
            else:
                k.out[seq] = copies - 1
        if k.held_by != event_id:
            earliest = k.earliest_out()
            if k.held_by is not None or self.calm or (earliest is not None and earliest < seq):
                k.out[seq] = k.out.get(seq, 0) + 1
                return Verdict.ASIDE
        if k.running:
            insort(k.waiting, _Waiting(seq, event_id, item))
            return Verdict.WAIT
        k.running = True
        return Verdict.RUN

    def returned(self, key: str, seq: int) -> None:
        """The lap copy *seq* of *key* was never sent (its event went back to the partition
        queue instead): it is not out. It comes back as a fresh delivery, maybe without its
        number (an event the partition exchange routed was numbered here, in memory only)."""
        k = self._keys.get(key)
        copies = k.out.get(seq) if k is not None else None
        if k is None or not copies:
            return
        if copies == 1:
            del k.out[seq]
        else:
            k.out[seq] = copies - 1

    def held_by(self, key: str) -> str | None:
        k = self._keys.get(key)
        return k.held_by if k is not None else None

    def done(self, key: str, event_id: str, ended: Ended, now: float) -> tuple[T | None, list[T]]:
        """*event_id* of *key* ended: the next of the key to run, and those to send aside."""
        k = self._keys.get(key)
        if k is None:  # forgotten meanwhile: its next events come again anyway
            return None, []
        k.running = False
        if ended is Ended.RETRY:
            if k.held_by is None:
                k.held_since = now
            k.held_by = event_id
            return None, self._all_aside(k)
        if k.held_by == event_id:
            k.held_by = None
        if k.waiting:
            earliest = k.earliest_out()
            if k.held_by is not None or (earliest is not None and earliest < k.waiting[0].seq):
                return None, self._all_aside(k)
            k.running = True
            return k.waiting.pop(0).item, []
        if not k.out and k.held_by is None:
            del self._keys[key]
        return None, []

    def _all_aside(self, k: _Key[T]) -> list[T]:
        """The key's waiting events, in order, to the hold queue."""
        for w in k.waiting:
            k.out[w.seq] = k.out.get(w.seq, 0) + 1
        aside = [w.item for w in k.waiting]
        k.waiting.clear()
        return aside

    def idle(self) -> bool:
        """Nothing held and nothing of this gate out on a lap."""
        return all(not k.out and k.held_by is None for k in self._keys.values())

    def holds(self) -> list[Hold]:
        """The keys held now, oldest first."""
        held = [
            Hold(key, k.held_by, k.held_since, sum(k.out.values()))
            for key, k in self._keys.items()
            if k.held_by is not None
        ]
        return sorted(held, key=lambda h: h.since)
