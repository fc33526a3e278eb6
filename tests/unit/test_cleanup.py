"""Tests leave nothing behind: PostgreSQL tables go in a database of the session's own, dropped
at its end, and matplotlib writes its config and cache to a temporary folder, not the home."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit


def test_postgresql_tests_write_to_a_database_dropped_at_the_end_of_the_session() -> None:
    url = os.environ.get("BUS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    database = urlsplit(url).path.lstrip("/")
    assert database.startswith("bus_test_"), f"tests write their tables into {database!r}"


def test_matplotlib_writes_to_a_temporary_folder_not_the_home() -> None:
    folder = os.environ.get("MPLCONFIGDIR", "")
    assert folder and Path(folder).is_relative_to(tempfile.gettempdir()), folder
