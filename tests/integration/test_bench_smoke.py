"""The benchmark runs end to end with tiny counts and writes a result for every scenario.

No timing assertions: this only guards the benchmark code against rot.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import SCENARIOS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_smoke_benchmark_completes_and_writes_every_scenario(amqp_url: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--url", amqp_url, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
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


def test_the_profile_scripts_report_both_sides_and_the_bus_sides_profile(amqp_url: str) -> None:
    for script, extra in (("bench.profile_publish", ["--window", "50"]),
                          ("bench.profile_consume", ["--readers"])):  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", script, "--url", amqp_url, "--events", "200", "--rounds", "2",
             "--cprofile", "--top", "3", *extra],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, (
            f"{script} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        )
        lines = done.stdout.splitlines()
        assert any(ln.startswith("naive ") for ln in lines), done.stdout
        assert any(ln.startswith("bus ") for ln in lines), done.stdout
        assert "bus/naive (events/s)" in done.stdout and "Ordered by: cumulative" in done.stdout
        if script == "bench.profile_consume":  # and the bus on aiormq's frame reader
            assert any(ln.startswith("bus-aiormq ") for ln in lines), done.stdout
