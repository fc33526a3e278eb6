"""What differs between the RabbitMQ releases the bus supports, as far as topology goes.

RabbitMQ 4.0 gives every quorum queue a delivery limit of 20 unless it sets one, and every
return of a message to the queue counts: a `bus dlq list`, a UI page or a gauge peek returns
what it read. Past the limit a message is dead-lettered, or dropped where the queue has no
dead-letter target, as a DLQ has none. On 4.x a DLQ therefore says `x-delivery-limit: -1`
(no limit). RabbitMQ 3.x has no default limit, and takes `-1` as a limit it is already past:
a 3.10 quorum queue declared with `-1` drops its message at the first return. So the argument
depends on the release, and only there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

UNLIMITED = -1  # x-delivery-limit on RabbitMQ 4.x: no delivery limit


@dataclass(frozen=True, slots=True, order=True)
class Release:
    """A RabbitMQ release line, e.g. `Release(4, 0)`."""

    major: int
    minor: int = 0

    @classmethod
    def parse(cls, version: str | bytes | None) -> Release:
        """From a broker's `version` server property ("4.0.5"); an unreadable one counts as
        the oldest supported release."""
        text = version.decode(errors="replace") if isinstance(version, bytes) else version or ""
        found = re.match(r"\s*(\d+)\.(\d+)", text)
        return cls(int(found[1]), int(found[2])) if found else OLDEST

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def default_delivery_limit(self) -> int | None:
        """The delivery limit a quorum queue gets when it declares none (None: unlimited)."""
        return 20 if self.major >= 4 else None

    @property
    def unlimited_delivery_limit(self) -> int | None:
        """The `x-delivery-limit` that means no limit, or None where leaving the argument out
        already means that."""
        return UNLIMITED if self.major >= 4 else None


OLDEST = Release(3, 10)
