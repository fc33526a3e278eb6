"""The work of `bench.process_executor`: module-level, so worker processes can import it."""

from __future__ import annotations

import time
from typing import Any


def work(event: dict[str, Any], ctx: Any) -> None:
    """Busy for `event["us"]` microseconds of CPU (0: nothing, the executor's own cost)."""
    deadline = time.perf_counter() + event["us"] / 1e6
    while time.perf_counter() < deadline:
        pass
