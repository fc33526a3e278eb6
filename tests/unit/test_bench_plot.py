"""`python -m bench --plot`: PNG charts from a results document (matplotlib's Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import plot
from bench.run import main

PNG = b"\x89PNG\r\n\x1a\n"


def fake_results() -> dict[str, Any]:
    def row(scenario: str, metric: str, bus: float, raw: float, naive: float | None,
            rounds: dict[str, list[float]], target: str = "", **extra: Any) -> dict[str, Any]:  # fmt: skip
        return {"scenario": scenario, "metric": metric, "unit": "events/s", "bus": bus,
                "raw": raw, "naive": naive, "higher_is_better": True, "target": target,
                "rounds": rounds, "extra": extra}  # fmt: skip

    cdf = {side: [1.0 + k / 100 * shift for k in range(1, 101)]
           for side, shift in (("bus", 1.0), ("raw", 1.2), ("naive", 1.4), ("faststream", 2.0))}  # fmt: skip
    return {
        "command": "python -m bench --smoke",
        "queue_type": "quorum",
        "machine": {"cpus": 2},
        "finished_at": "2025-01-01T00:00:00+00:00",
        "scenarios": {
            "publish": [
                row(
                    "publish",
                    "publish_many, window 1000",
                    5000,
                    3500,
                    4000,
                    {"bus": [4000, 6000], "raw": [3500, 3500], "naive": [4000, 4000]},
                    "bus/naive >= 1",
                )
            ],
            "latency": [row("latency", "publish -> handler p50", 2.0, 2.2, 2.4, {}, cdf=cdf)],
        },
    }


def test_ratio_bars_carry_the_spread_over_rounds_and_the_target() -> None:
    bars = {(b["label"], b["ref"]): b for b in plot.ratio_bars(fake_results())}
    naive = bars[("publish: publish_many, window 1000", "naive")]
    assert naive["ratio"] == pytest.approx(1.25)
    assert (naive["low"], naive["high"]) == pytest.approx((1.0, 1.5))
    assert naive["target"] == 1.0
    raw = bars[("publish: publish_many, window 1000", "raw")]
    assert raw["target"] is None and raw["low"] == pytest.approx(4000 / 3500)
    p50 = bars[("latency: publish -> handler p50", "raw")]
    assert p50["low"] == p50["high"] == p50["ratio"], "no rounds: no spread"


def test_plot_writes_both_charts_as_png(tmp_path: Path) -> None:
    written = plot.write(fake_results(), tmp_path)
    assert sorted(p.name for p in written) == ["latency_cdf.png", "ratios.png"]
    for path in written:
        assert path.read_bytes().startswith(PNG), f"{path.name} is not a PNG"


def test_plot_only_draws_from_an_existing_results_file(tmp_path: Path) -> None:
    import json

    results = tmp_path / "latest.json"
    results.write_text(json.dumps(fake_results()))
    out = tmp_path / "charts"
    assert main(["--plot-only", str(results), "--plot-dir", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"latency_cdf.png", "ratios.png"}


def test_a_run_without_latency_or_ratios_draws_nothing(tmp_path: Path) -> None:
    assert plot.write({"scenarios": {}}, tmp_path) == []
