"""Charts of a benchmark run: `python -m bench --plot` (after the run) or
`python -m bench --plot-only bench/results/latest.json` (from a results file).

Writes PNGs (matplotlib's Agg backend, no display needed) into `docs/bench/` by default:
- `ratios.png`: per row with a bus/naive or bus/raw ratio, a bar of the ratio over the whole run
  with its spread over the rounds (min-max of the per-round ratios) as an error bar, and the
  row's target as a tick;
- `latency_cdf.png`: the publish -> handler latency distribution (CDF) of every side measured
  (bus, naive, tuned raw, FastStream), from the latency row's `extra["cdf"]` quantiles.

matplotlib comes with the `bench` and `dev` extras.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "docs" / "bench"
LABELS = {"bus": "bus", "naive": "naive aio-pika", "raw": "tuned raw aio-pika",
          "faststream": "FastStream", "naive_bare": "naive, bare"}  # fmt: skip
REFERENCES = ("naive", "raw")  # ratio bars: bus / each of these


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def ratio_bars(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per row and reference: label, ratio, per-round min and max, target."""
    bars = []
    for rows in doc.get("scenarios", {}).values():
        for row in rows:
            rounds = row.get("rounds") or {}
            for ref in REFERENCES:
                ref_value = row.get(ref)
                if not ref_value or not row.get("bus"):
                    continue
                per_round = [b / r for b, r in zip(rounds.get("bus", []), rounds.get(ref, []),
                                                   strict=False) if r]  # fmt: skip
                ratio = row["bus"] / ref_value
                target = _target(row.get("target", ""), ref)
                bars.append({
                    "label": f"{row['scenario']}: {row['metric']}", "ref": ref, "ratio": ratio,
                    "low": min(per_round, default=ratio), "high": max(per_round, default=ratio),
                    "target": target, "higher_is_better": row.get("higher_is_better", True),
                })  # fmt: skip
    return bars


def _target(text: str, ref: str) -> float | None:
    match = re.fullmatch(rf"bus/{ref} [<>]= ([0-9.]+)", text)
    return float(match.group(1)) if match else None


def write(doc: dict[str, Any], out_dir: Path = DEFAULT_DIR) -> list[Path]:
    """Write the charts of *doc* (a results JSON) into *out_dir*; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    bars = ratio_bars(doc)
    if bars:
        written.append(_ratios(doc, bars, out_dir / "ratios.png"))
    cdf = _cdf_of(doc)
    if cdf:
        written.append(_latency(doc, cdf, out_dir / "latency_cdf.png"))
    return written


def _title(doc: dict[str, Any], what: str) -> str:
    machine = doc.get("machine", {})
    command, queues = str(doc.get("command", "python -m bench")), doc.get("queue_type", "")
    if len(command) > 70:
        command = command[:67] + "..."
    when = str(doc.get("finished_at", ""))[:16]
    return f"{what}\n{command} · {queues} queues · {machine.get('cpus', '?')} CPUs · {when}"


def _ratios(doc: dict[str, Any], bars: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(b["label"] for b in bars))
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(labels) + 1.8))
    height = 0.38
    for k, ref in enumerate(REFERENCES):
        mine = {b["label"]: b for b in bars if b["ref"] == ref}
        ys = [i + (k - 0.5) * height for i, label in enumerate(labels) if label in mine]
        got = [mine[label] for label in labels if label in mine]
        ax.barh(
            ys, [b["ratio"] for b in got], height=height, label=f"bus / {LABELS[ref]}",
            xerr=[[b["ratio"] - b["low"] for b in got], [b["high"] - b["ratio"] for b in got]],
            capsize=3, color=("tab:blue", "tab:gray")[k],
        )  # fmt: skip
        for y, b in zip(ys, got, strict=True):
            if b["target"] is not None:
                ax.plot([b["target"]] * 2, [y - height / 2, y + height / 2], color="tab:red")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio (events/s: higher is better for the bus; ms, µs: lower is)")
    ax.set_title(_title(doc, "bus / reference, whole run; bars: min-max over rounds; red: target"),
                 fontsize=9)  # fmt: skip
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cdf_of(doc: dict[str, Any]) -> dict[str, list[float]]:
    for row in doc.get("scenarios", {}).get("latency", []):
        cdf = (row.get("extra") or {}).get("cdf")
        if cdf:
            return {side: values for side, values in cdf.items() if values}
    return {}


def _latency(doc: dict[str, Any], cdf: dict[str, list[float]], path: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    fig, ax = plt.subplots(figsize=(8, 5))
    for side, values in cdf.items():
        n = len(values)
        ax.step(values, [(k + 1) / n for k in range(n)], where="post", label=LABELS.get(side, side))
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("publish -> handler latency (ms, log scale)")
    ax.set_ylabel("fraction of events")
    ax.axhline(0.99, color="gray", linewidth=0.6, linestyle="--")
    ax.text(ax.get_xlim()[0], 0.99, " p99", va="bottom", fontsize=8, color="gray")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(_title(doc, "publish -> handler latency, CDF"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
