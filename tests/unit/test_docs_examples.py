"""Every Python example in the docs compiles, and the complete ones run: a page's blocks that
start with `# file: NAME` are written to a folder, type-checked with mypy --strict, and its
`test_*.py` files run with pytest there, so the docs cannot drift from the code."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", flags=re.S | re.M)
FILE = re.compile(r"^(?:#|//) file: (\S+)\n")


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def blocks(page: Path, language: str | None = None) -> list[tuple[str, str]]:
    found = FENCE.findall(page.read_text())
    return [(lang, body) for lang, body in found if language is None or lang == language]


def files(page: Path) -> dict[str, str]:
    """The blocks of *page* that are whole files, by name."""
    named = {}
    for _, body in blocks(page):
        match = FILE.match(body)
        if match:
            named[match.group(1)] = body
    return named


def test_the_docs_have_python_examples() -> None:
    assert sum(len(blocks(p, "python")) for p in pages()) >= 10


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_every_python_example_compiles(page: Path) -> None:
    for _, body in blocks(page, "python"):
        compile(body, str(page), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT | ast.PyCF_ONLY_AST)


# strict for the examples; the library itself is checked by `make lint`, not here
MYPY_INI = """[mypy]
strict = True
plugins = pydantic.mypy

[mypy-bus.*]
follow_imports = silent
"""

COMPLETE = [p for p in pages() if files(p)]


def test_the_tutorial_is_complete_files() -> None:
    assert DOCS / "tutorial.md" in COMPLETE


@pytest.mark.parametrize("page", COMPLETE, ids=lambda p: str(p.relative_to(DOCS)))
def test_complete_examples_type_check_and_their_tests_pass(page: Path, tmp_path: Path) -> None:
    for name, body in files(page).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    python = sorted(n for n in files(page) if n.endswith(".py"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
    env["MYPYPATH"] = str(REPO)  # an editable install is invisible to mypy otherwise
    config = tmp_path.parent / f"{tmp_path.name}-mypy.ini"
    config.write_text(MYPY_INI)
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--no-error-summary",
         "--cache-dir", str(REPO / ".mypy_cache" / "docs"), *python],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tests = [n for n in python if Path(n).name.startswith("test_")]
    if tests:
        ran = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert ran.returncode == 0 and " passed" in ran.stdout, ran.stdout + ran.stderr


def test_the_readme_is_a_short_front_door_whose_links_resolve() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for _, body in FENCE.findall(readme):
        if body.startswith(("from ", "import ")):
            compile(body, "README.md", "exec", flags=ast.PyCF_ONLY_AST)
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme)
    assert links
    assert [link for link in links if not (REPO / link).exists()] == []
    assert "DESIGN.md" not in readme
