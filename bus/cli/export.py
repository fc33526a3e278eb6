"""`bus export` (see DESIGN.md). Registered by `register()`."""

from __future__ import annotations

import typer


def register(app: typer.Typer, topology_app: typer.Typer) -> None:
    """Add this module's commands to the CLI (not yet implemented)."""
