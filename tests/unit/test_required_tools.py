"""A check whose command is missing skips on a developer's machine and fails in CI."""

from __future__ import annotations

import pytest

import tests.conftest as conftest


def test_a_missing_tool_skips_unless_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest.shutil, "which", lambda name: None)
    monkeypatch.setattr(conftest, "REQUIRE_TOOLS", False)
    with pytest.raises(pytest.skip.Exception, match="promtool is not on PATH"):
        conftest.tool("promtool", "the alert rules")
    monkeypatch.setattr(conftest, "REQUIRE_TOOLS", True)  # .ci/run: BUS_REQUIRE_TOOLS=1
    with pytest.raises(pytest.fail.Exception, match="the alert rules not checked"):
        conftest.tool("promtool", "the alert rules")
