"""mkdocs hooks: the reference pages generated from the code.

A page holds a marker such as `<!-- generated: cli -->`; the hook replaces it with the text
rendered from the code, so the command line, the topology file's schema and the metrics in the
docs are the ones the installed `bus` has.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

os.environ.setdefault("TYPER_USE_RICH", "0")  # plain click help: text, not terminal drawing

MARKER = re.compile(r"<!-- generated: ([a-z-]+) -->")


def _cli() -> str:
    import click
    import typer

    from bus.cli import app

    root = typer.main.get_command(app)
    parts: list[str] = []

    def walk(cmd: click.Command, ctx: click.Context) -> None:
        name = ctx.command_path
        parts.append(f"### `{name}`\n\n```text\n{cmd.get_help(ctx).rstrip()}\n```\n")
        if isinstance(cmd, click.Group):
            for sub in sorted(cmd.list_commands(ctx)):
                child = cmd.get_command(ctx, sub)
                if child is not None and not child.hidden:
                    walk(child, click.Context(child, info_name=sub, parent=ctx))

    walk(root, click.Context(root, info_name="bus", terminal_width=100, max_content_width=100))
    return "\n".join(parts)


def _topology_schema() -> str:
    from bus.topology.model import TopologyFile

    schema = TopologyFile.model_json_schema()
    return f"```json\n{json.dumps(schema, indent=2)}\n```\n"


def _metrics() -> str:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    from bus.metrics import Metrics

    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for metric in vars(Metrics(CollectorRegistry())).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        kind = metric._type  # counter, gauge, histogram
        name = metric._name + ("_total" if kind == "counter" else "")
        labels = ", ".join(f"`{label}`" for label in metric._labelnames) or "—"
        rows.append(f"| `{name}` | {kind} | {labels} | {metric._documentation} |")
    return "\n".join(rows) + "\n"


GENERATORS = {"cli": _cli, "topology-schema": _topology_schema, "metrics": _metrics}


def on_page_markdown(markdown: str, **_: Any) -> str:
    def render(match: re.Match[str]) -> str:
        return GENERATORS[match.group(1)]()

    return MARKER.sub(render, markdown)
