"""bus.stores: MemoryStore and SqliteStore pass the store contract; `open_store` reads URLs."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import pytest

import bus.stores.memory
import bus.stores.sqlite
from bus.errors import ConfigError
from bus.stores import Claim, MemoryStore, Store, open_store
from bus.stores.owner import local_owner
from bus.stores.sqlite import SqliteStore
from tests.unit.store_contract import DeadHolder, ReplicaStoreContract, StoreContract


class TestMemoryStore(StoreContract):
    clock_module: ClassVar[ModuleType] = bus.stores.memory

    @pytest.fixture
    def store(self) -> MemoryStore:
        return MemoryStore()

    @pytest.fixture
    def other(self, store: MemoryStore) -> MemoryStore:
        return store  # one process: replicas share the one instance


class TestSqliteStore(ReplicaStoreContract):
    clock_module: ClassVar[ModuleType] = bus.stores.sqlite

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[Store]:
        s = await SqliteStore.open(str(tmp_path / "processed.db"))
        yield s
        await s.close()

    @pytest.fixture
    async def other(self, store: Store, tmp_path: Path) -> AsyncIterator[Store]:
        s = await SqliteStore.open(str(tmp_path / "processed.db"))
        yield s
        await s.close()

    @pytest.fixture
    def dead_holder(self, tmp_path: Path) -> DeadHolder:
        async def leave_a_claim_and_die(sub: str, event_id: str) -> None:
            proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            holder = await SqliteStore.open(str(tmp_path / "processed.db"))
            holder.owner = local_owner(proc.pid)  # its claims are that process's
            assert await holder.claim(sub, event_id, lease=300) is Claim.CLAIMED
            await holder.close()
            proc.send_signal(signal.SIGKILL)
            proc.wait()

        return leave_a_claim_and_die

    async def test_records_survive_a_restart(self, tmp_path: Path) -> None:
        path = str(tmp_path / "restart.db")
        first = await SqliteStore.open(path)
        await first.complete("email", "e-1")
        await first.close()
        second = await SqliteStore.open(path)
        try:
            assert await second.claim("email", "e-1") == "done"
        finally:
            await second.close()


async def test_open_store_memory_url() -> None:
    assert isinstance(await open_store("memory://"), MemoryStore)


async def test_open_store_sqlite_relative_path_is_under_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = await open_store("sqlite:///.bus/processed.db")
    try:
        assert isinstance(store, SqliteStore)
        assert (tmp_path / ".bus" / "processed.db").is_file()
    finally:
        await store.close()


async def test_open_store_sqlite_absolute_path_takes_four_slashes(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "abs.db"
    store = await open_store(f"sqlite:///{target}")
    assert str(target).startswith("/")
    try:
        assert target.is_file()
    finally:
        await store.close()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///"])
async def test_open_store_sqlite_without_a_path_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="sqlite needs a path"):
        await open_store(url)


@pytest.mark.parametrize("url", ["redis://user:s3cret@cache:6379/0", "mysql://db/x", "", "/tmp/x"])
async def test_open_store_unknown_scheme_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="unsupported store") as info:
        await open_store(url)
    assert "s3cret" not in str(info.value), "passwords never appear in errors"
