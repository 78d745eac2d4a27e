"""The `store` fixture, parametrized over every backend; the contract suite runs unchanged on each.

PostgreSQL is the run's one server (the session fixture `postgres`: the machine's, the one PAYFLOW_TEST_POSTGRES
names, or an embedded one). Each test gets its own schema, dropped afterwards.
"""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from payflow.store import PaymentStore, open_store
from tests import postgres_server

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
async def store_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'payflow.db'}"
        return
    # Asked for here, not as an argument: a run of the SQLite cases alone starts no PostgreSQL.
    postgres: postgres_server.Server = request.getfixturevalue("postgres")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres.url)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        yield f"{postgres.url}?search_path={schema}"
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
