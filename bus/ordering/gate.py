"""Per key, one event at a time in arrival order, and a durable hold while one of them retries.

Pure state of one process's partitions. For each delivery `admit` answers:

- `RUN`: nothing of its key is running, waiting, held or out on a lap: the shell runs it.
- `WAIT`: an earlier event of its key is running: the gate keeps it until that one is `done`.
- `ASIDE`: its key is held (an earlier event is on the retry ladder), or earlier events of the
  key are still out on a hold lap: the shell sends it round the partition's hold queue.

`done` reports how an event ended and returns the next event of its key to run, and the events
that must step aside because the event went to retry (the key is now held by it). Nothing waits
unacknowledged while a key is held: its events go round the hold queue (a short TTL back to the
partition) until the event that holds the key comes back from its retry queue and succeeds or
parks. A hold lap keeps order because the hold queue is first in, first out, and a key's fresh
events step aside too while any of its earlier ones are out on a lap.
"""

from __future__ import annotations

from collections import deque
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


@dataclass
class _Key(Generic[T]):
    running: bool = False
    waiting: deque[tuple[str, T]] = field(default_factory=deque)
    held_by: str | None = None  # the id of the event on the retry ladder
    held_since: float = 0.0
    out: int = 0  # events of this key out on a hold lap


@dataclass(frozen=True, slots=True)
class Hold:
    """A held key, for `bus status` and the metrics."""

    key: str
    held_by: str
    since: float
    aside: int


class Gate(Generic[T]):
    """Admits events of each key one at a time; `T` is whatever the shell keeps (a delivery).

    *tag* marks the laps this gate sends (a lap of another gate, such as the replica's that had
    the partition before, is not counted as one of ours). *held*: keys held when the gate
    starts, from the store. Until *calm_at* (a time), fresh events of every key go round a
    lap: laps sent by the partition's previous owner may still be out, and must not be passed.
    """

    def __init__(
        self, tag: str = "", *, held: Iterable[tuple[str, str, float]] = (), calm_at: float = 0.0
    ) -> None:
        self.tag = tag
        self.calm_at = calm_at
        self._keys: dict[str, _Key[T]] = {}
        for key, event_id, since in held:
            self._keys[key] = _Key(held_by=event_id, held_since=since)

    def admit(self, key: str, event_id: str, item: T, *, lap: str | None, now: float) -> Verdict:
        """What to do with *item*, an event of *key*; *lap*: the tag of the lap it comes back
        from, None for a fresh event."""
        k = self._keys.get(key)
        if k is None:
            k = self._keys[key] = _Key()
        if lap is not None and lap == self.tag and k.out:
            k.out -= 1
        if k.held_by is not None and k.held_by != event_id:
            k.out += 1
            return Verdict.ASIDE
        if lap is None and k.held_by != event_id and (k.out or now < self.calm_at):
            k.out += 1  # earlier ones of its key may still be out on a lap
            return Verdict.ASIDE
        if k.running:
            k.waiting.append((event_id, item))
            return Verdict.WAIT
        k.running = True
        return Verdict.RUN

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
            aside = [item for _, item in k.waiting]
            k.out += len(aside)
            k.waiting.clear()
            return None, aside
        if k.held_by == event_id:
            k.held_by = None
        if k.waiting:
            k.running = True
            return k.waiting.popleft()[1], []
        if not k.out and k.held_by is None:
            del self._keys[key]
        return None, []

    def holds(self) -> list[Hold]:
        """The keys held now, oldest first."""
        held = [
            Hold(key, k.held_by, k.held_since, k.out)
            for key, k in self._keys.items()
            if k.held_by is not None
        ]
        return sorted(held, key=lambda h: h.since)
