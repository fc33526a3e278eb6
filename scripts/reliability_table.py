"""Print the fault-injection reports of `make test` as one Markdown table, a column per version.

Each pass of the tests writes `.bus/fault-report-<version>.json`; run this after `make test`:
`python scripts/reliability_table.py` (or pass the report files).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def _key(scenario: str) -> str:
    """A scenario without its run's own figures: "SIGKILLed x9" and "x12" are one row."""
    return re.sub(r"\s*\(kill -> .*?\)|\s*x\d+", "", scenario).strip()


def _recovery(scenario: str) -> str:
    """The "kill -> first ..." time a failover scenario names, as "; kill → 0.4s"."""
    found = re.search(r"\(kill -> [a-z ]*?([0-9.]+s)\)", scenario)
    return f"; kill → {found.group(1)}" if found else ""


def table(reports: dict[str, list[dict[str, object]]]) -> str:
    versions = sorted(reports)
    rows: dict[str, dict[str, dict[str, object]]] = {}
    for version in versions:
        for row in reports[version]:
            rows.setdefault(_key(str(row["scenario"])), {})[version] = row
    head = "| scenario | " + " | ".join(f"RabbitMQ {v}: handled / lost / s" for v in versions)
    lines = [head + " |", "|---|" + "---:|" * len(versions)]
    for scenario, by_version in rows.items():
        cells = []
        for v in versions:
            r = by_version.get(v)
            cells.append(
                f"{r['handled']} / {r['lost']} / {r['seconds']}{_recovery(str(r['scenario']))}"
                if r
                else "not in this pass"
            )
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(paths: list[str]) -> None:
    files = [Path(p) for p in paths] or sorted(Path(".bus").glob("fault-report-*.json"))
    if not files:
        sys.exit("no .bus/fault-report-*.json: run `make test` first")
    reports = {f.stem.removeprefix("fault-report-"): json.loads(f.read_text()) for f in files}
    print(table(reports))


if __name__ == "__main__":
    main(sys.argv[1:])
