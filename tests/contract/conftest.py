"""The `store` fixture, parametrized over every backend; the contract suite runs unchanged on each.

PostgreSQL runs on 127.0.0.1:5432 (database `test`, trust auth; `.ci/run` starts it). Each test gets
its own schema, dropped afterwards.
"""

from __future__ import annotations

import os
import pathlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from payflow.store import PaymentStore, open_store

BACKENDS = ["sqlite", "postgresql"]
POSTGRES = os.environ.get("PAYFLOW_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=BACKENDS)
async def store_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'payflow.db'}"
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        yield f"{POSTGRES}?search_path={schema}"
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


@pytest.fixture
async def open_url(store_url: str) -> AsyncIterator[Callable[[], Awaitable[PaymentStore]]]:
    """Opens extra stores on the same database (another 'process'); all are closed at the end."""
    opened: list[PaymentStore] = []

    async def opener() -> PaymentStore:
        store = await open_store(store_url)
        opened.append(store)
        return store

    yield opener
    for store in reversed(opened):
        await store.close()


@pytest.fixture
async def store(open_url: Callable[[], Awaitable[PaymentStore]]) -> PaymentStore:
    return await open_url()
