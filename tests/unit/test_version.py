"""One version number, in `bus/__init__.py`: the package metadata, `bus.__version__` and
`bus --version` all say it, and pyproject.toml does not write a second one."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import bus

REPO = Path(__file__).resolve().parents[2]


def test_the_version_is_written_once_and_pyproject_reads_it() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "bus.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", bus.__version__)


def test_bus_version_prints_the_package_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bus.cli", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"bus {bus.__version__}"


def test_the_installed_metadata_has_the_same_version() -> None:
    assert version("bus") == bus.__version__
