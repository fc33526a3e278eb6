"""PostgresStore passes the store contract against a real PostgreSQL.

`BUS_TEST_POSTGRES_URL` if set, else postgresql://postgres@127.0.0.1:5432/test. Every test uses
its own subscriber name, so tests never see each other's records in the shared table.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from types import ModuleType
from typing import ClassVar

import pytest

import bus.stores.postgres
from bus.errors import DatabaseUnavailable
from bus.stores import Claim, Store, open_store
from bus.stores.postgres import PostgresStore
from tests.unit.store_contract import DeadHolder, ReplicaStoreContract

POSTGRES_URL = os.environ.get("BUS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def _open() -> PostgresStore:
    try:
        return await PostgresStore.open(POSTGRES_URL)
    except DatabaseUnavailable as exc:
        pytest.fail(f"no PostgreSQL for the store tests: {exc} (set BUS_TEST_POSTGRES_URL)")


class TestPostgresStore(ReplicaStoreContract):
    clock_module: ClassVar[ModuleType] = bus.stores.postgres

    @pytest.fixture
    async def store(self) -> AsyncIterator[Store]:
        s = await _open()
        yield s
        await s.close()

    @pytest.fixture
    async def other(self, store: Store) -> AsyncIterator[Store]:
        s = await _open()  # a second pool: another replica
        yield s
        await s.close()

    @pytest.fixture
    def dead_holder(self) -> DeadHolder:
        async def leave_a_claim_and_die(sub: str, event_id: str) -> None:
            holder = await _open()
            assert await holder.claim(sub, event_id, lease=300) is Claim.CLAIMED
            await holder.close()  # its lock connection ends, as a killed process's does

        return leave_a_claim_and_die


async def test_open_store_postgresql_url() -> None:
    store = await open_store(POSTGRES_URL)
    try:
        assert isinstance(store, PostgresStore)
    finally:
        await store.close()


async def test_unreachable_postgres_is_reported_with_the_password_redacted() -> None:
    with pytest.raises(DatabaseUnavailable, match=r"postgres:\*\*\*@127\.0\.0\.1:1/") as info:
        await PostgresStore.open("postgresql://postgres:s3cret@127.0.0.1:1/test")
    assert "s3cret" not in str(info.value)
