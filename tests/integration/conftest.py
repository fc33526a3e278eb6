"""Collects the fault-injection counts and prints them as one table at the end of the run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

_ROWS: list[dict[str, Any]] = []
COLUMNS = ("scenario", "sent", "confirmed", "handled", "duplicates", "lost", "seconds")


@pytest.fixture
def fault_report() -> Any:
    """Call with the counts of one scenario: fault_report(scenario=..., sent=..., ...)."""

    def record(**row: Any) -> None:
        _ROWS.append(row)

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _ROWS:
        return
    tr = terminalreporter
    tr.section("fault injection: events sent, confirmed, handled once, duplicates absorbed, lost")
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in _ROWS)) for c in COLUMNS]
    tr.write_line("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)))
    for r in _ROWS:
        tr.write_line(
            "  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(COLUMNS, widths, strict=True))
        )
    out = Path(".bus/fault-report.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(_ROWS, indent=2))
