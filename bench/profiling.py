"""What `bench.profile_publish` and `bench.profile_consume` share: their common options, and
the cProfile report of the bus side."""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats

from bench.common import BUS, NAIVE


def parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """The options both take; each adds its own."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--url", default=os.environ.get("BUS_URL", "amqp://guest:guest@localhost:5672/"))
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--queue-type", choices=("quorum", "classic"), default="quorum")
    p.add_argument("--only", choices=(BUS, NAIVE), default=None)
    p.add_argument("--cprofile", action="store_true", help="profile the bus side")
    p.add_argument("--top", type=int, default=30, help="functions listed per ordering")
    return p


def print_profile(profiler: cProfile.Profile | None, top: int) -> None:
    """The functions taking the profiled side's time: own time first, then cumulative."""
    if profiler is None:
        return
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(top)
        print(out.getvalue())
