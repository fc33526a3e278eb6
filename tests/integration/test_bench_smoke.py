"""The benchmark runs end to end with tiny counts and writes a result for every scenario.

No timing assertions: this only guards the benchmark code against rot.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.run import SCENARIOS

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_benchmark_completes_and_writes_every_scenario(amqp_url: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--url", amqp_url, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert done.returncode == 0, f"benchmark failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    doc = json.loads(out.read_text())
    assert set(doc["scenarios"]) == set(SCENARIOS), (
        f"scenarios in the JSON: {sorted(doc['scenarios'])}"
    )
    for name, rows in doc["scenarios"].items():
        assert rows, f"scenario {name} wrote no rows"
        for row in rows:
            assert {"metric", "unit", "bus", "raw", "ratio"} <= set(row), (name, row)
