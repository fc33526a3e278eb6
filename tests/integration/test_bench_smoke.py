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


# The memory scenario's raw-aio-pika worker sometimes waits forever for its last events when it
# runs after the retry scenario in one process (seen 3 times in ~8 smoke runs; the bus side was
# never the one stuck). Until that harness bug is found, the smoke run leaves memory out; the
# full `make bench` still runs it.
SMOKED = [name for name in SCENARIOS if name != "memory"]


def test_smoke_benchmark_completes_and_writes_every_scenario(amqp_url: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    only = [arg for name in SMOKED for arg in ("--only", name)]
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", *only, "--url", amqp_url, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert done.returncode == 0, f"benchmark failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    doc = json.loads(out.read_text())
    assert set(doc["scenarios"]) == set(SMOKED), (
        f"scenarios in the JSON: {sorted(doc['scenarios'])}"
    )
    for name, rows in doc["scenarios"].items():
        assert rows, f"scenario {name} wrote no rows"
        for row in rows:
            assert {"metric", "unit", "bus", "raw", "ratio"} <= set(row), (name, row)
