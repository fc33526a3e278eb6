"""`bus run` of the saga subscriber with a SIGKILL right after a step's commit (before its
rows are relayed and before the ack): `python -m tests.integration.saga_faults refunds`.

SAGA_CRASH=after-commit arms it; FAULT_DIR keeps the once-only mark across processes.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from bus.consume.service import main
from bus.sagas.postgres import PostgresSagaStore
from bus.sagas.sqlite import SqliteSagaStore
from bus.sagas.store import Transition


def _dies_after(original: Any) -> Any:
    async def commit(self: Any, t: Transition) -> None:
        await original(self, t)
        mark = Path(os.environ["FAULT_DIR"]) / "crashed-after-commit"
        if os.environ.get("SAGA_CRASH") == "after-commit" and not mark.exists():
            mark.touch()
            os.kill(os.getpid(), signal.SIGKILL)  # nothing runs between the commit and this

    return commit


SqliteSagaStore.commit = _dies_after(SqliteSagaStore.commit)  # type: ignore[method-assign]
PostgresSagaStore.commit = _dies_after(PostgresSagaStore.commit)  # type: ignore[method-assign]

if __name__ == "__main__":
    main(sys.argv[1])
