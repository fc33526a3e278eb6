"""Run the benchmarks: `python -m bench` or `python bench/run.py` (`--help` for the options).

Every scenario does the same work with the bus and with raw aio-pika in the same run, against
the broker at `BUS_URL` (default the local one), prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # `python bench/run.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if TYPE_CHECKING:
    from bench.common import Counts, Env, Row

SCENARIOS = ("publish", "consume", "fanout", "latency", "retry", "memory", "outbox", "api",
             "saga", "history", "ordering")  # fmt: skip
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latest.json"
DEFAULT_URL = "amqp://guest:guest@localhost:5672/"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from bench.common import Counts

    p = argparse.ArgumentParser(
        prog="python -m bench", description="bus vs raw aio-pika, side by side"
    )
    p.add_argument("--smoke", action="store_true", help="tiny counts: the whole run in < 60 s")
    p.add_argument("--only", choices=SCENARIOS, action="append", help="run only this scenario")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON file ({DEFAULT_OUT})")
    p.add_argument("--url", default=os.environ.get("BUS_URL", DEFAULT_URL), help="AMQP URL")
    p.add_argument("--queue-type", choices=("quorum", "classic"), default="quorum")
    p.add_argument("--prefetch", type=int, default=32, help="prefetch of bus and raw consumers")
    p.add_argument(
        "--no-faststream", action="store_true",
        help="skip FastStream even when the `bench` extra is installed",
    )  # fmt: skip
    p.add_argument(
        "--plot", action="store_true",
        help="after the run, draw the charts (PNG) into --plot-dir",
    )  # fmt: skip
    p.add_argument(
        "--plot-only", type=Path, metavar="JSON",
        help="run nothing: draw the charts of this results file (e.g. bench/results/latest.json)",
    )  # fmt: skip
    p.add_argument(
        "--plot-dir", type=Path, default=None, help="where the PNGs go (default docs/bench/)"
    )
    counts = p.add_argument_group("counts (defaults: the full run; --smoke lowers them)")
    for f in dataclasses.fields(Counts):
        counts.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None)
    return p.parse_args(argv)


def counts_from(args: argparse.Namespace) -> Counts:
    from bench.common import SMOKE, Counts

    base = SMOKE if args.smoke else Counts()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Counts)}
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


async def run_all(env: Env, names: list[str]) -> tuple[dict[str, list[Row]], dict[str, str]]:
    """Rows per scenario, and the error of each scenario that failed (the others still run)."""
    results: dict[str, list[Row]] = {}
    errors: dict[str, str] = {}
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        started = time.monotonic()
        print(f"running {name} …", file=sys.stderr, flush=True)
        try:
            results[name] = await module.run(env)
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
            print(f"  {name} FAILED: {errors[name]}", file=sys.stderr, flush=True)
            continue
        print(f"  {name} done in {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
    return results, errors


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}"


def _columns(rows: list[Row]) -> list[tuple[str, Callable[[Row], str]]]:
    """The table's columns (naive bare and FastStream only when some row has them)."""

    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    def verdict(r: Row) -> str:
        return r.target + ("" if r.passed is None else (" ✓" if r.passed else " ✗"))

    cols: list[tuple[str, Callable[[Row], str]]] = [
        ("scenario", lambda r: r.scenario),
        ("metric", lambda r: r.metric),
        ("unit", lambda r: r.unit),
        ("bus", lambda r: fmt(r.bus)),
        ("naive", lambda r: fmt(r.naive)),
        ("tuned raw", lambda r: fmt(r.raw)),
        ("bus/naive", lambda r: ratio(r.naive_ratio)),
        ("bus/raw", lambda r: ratio(r.ratio)),
        ("target", verdict),
    ]
    if any(r.naive_bare is not None for r in rows):
        cols.append(("naive, bare", lambda r: fmt(r.naive_bare)))
    if any(r.faststream is not None for r in rows):
        cols.append(("FastStream", lambda r: fmt(r.faststream)))
    return cols


NUMERIC = {"bus", "naive", "tuned raw", "bus/naive", "bus/raw", "naive, bare", "FastStream"}


def print_table(results: dict[str, list[Row]]) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = [r for rs in results.values() for r in rs]
    cols = _columns(rows)
    table = Table(title="bus vs naive and tuned raw aio-pika (ratio = bus / reference)")
    for name, _ in cols:
        table.add_column(name, justify="right" if name in NUMERIC else "left")
    for r in rows:
        table.add_row(*(cell(r) for _, cell in cols))
    Console(width=max(160, Console().width)).print(table)
    for r in rows:
        if r.note:
            print(f"note ({r.scenario}, {r.metric}): {r.note}")


def markdown(results: dict[str, list[Row]]) -> str:
    """The table as markdown, for the README."""
    rows = [r for rs in results.values() for r in rs]
    cols = _columns(rows)
    head = "| " + " | ".join(name for name, _ in cols) + " |"
    rule = "|" + "|".join("---:" if name in NUMERIC else "---" for name, _ in cols) + "|"
    lines = [head, rule]
    lines += ["| " + " | ".join(cell(r) for _, cell in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_json(
    path: Path,
    env: Env,
    args: argparse.Namespace,
    results: dict[str, list[Row]],
    errors: dict[str, str],
) -> None:
    import aio_pika
    import pydantic

    from bench import fs

    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "finished_at": datetime.now(UTC).isoformat(),
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "smoke": args.smoke,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "versions": {
            "aio_pika": aio_pika.__version__,
            "pydantic": pydantic.VERSION,
            "faststream": fs.version() if env.faststream else None,
        },
        "queue_type": env.queue_type,
        "prefetch": env.prefetch,
        "counts": dataclasses.asdict(env.counts),
        "scenarios": {name: [r.as_json() for r in rows] for name, rows in results.items()},
        "errors": errors,
        "markdown": markdown(results),
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")


def plot(doc: dict[str, object], out_dir: Path | None) -> int:
    from bench import plot as charts

    for path in charts.write(doc, out_dir or charts.DEFAULT_DIR):
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from bench.common import Env

    args = parse_args(argv)
    if args.plot_only is not None:
        return plot(json.loads(args.plot_only.read_text()), args.plot_dir)
    # The bus logs a warning per failed handler; the retry scenario fails thousands on purpose.
    logging.basicConfig(level=logging.ERROR)
    from bench import fs

    env = Env(args.url, counts_from(args), args.queue_type, args.prefetch,
              faststream=fs.AVAILABLE and not args.no_faststream)  # fmt: skip
    if not env.faststream:
        why = "--no-faststream" if fs.AVAILABLE else "not installed: pip install -e '.[bench]'"
        print(f"FastStream is not measured ({why})", file=sys.stderr)
    names = args.only or list(SCENARIOS)
    results, errors = asyncio.run(run_all(env, names))
    print_table(results)
    write_json(args.out, env, args, results, errors)
    print(f"wrote {args.out}")
    if args.plot:
        plot(json.loads(args.out.read_text()), args.plot_dir)
    for name, error in errors.items():
        print(f"scenario {name} failed: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
