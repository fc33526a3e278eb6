"""The README's "Testing your handlers" example runs as written, with no broker."""

from __future__ import annotations

import re
import types
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def example() -> str:
    text = README.read_text()
    section = text.split("## Testing your handlers", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the section has no python example"
    return str(blocks[0])


async def test_the_readme_handler_test_passes_without_a_broker() -> None:
    module = types.ModuleType("readme_example")
    exec(compile(example(), str(README), "exec"), module.__dict__)
    await module.test_confirmations()
