"""The `store` fixture, parametrized over every backend; the contract suite runs unchanged on each."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from payflow.store import PaymentStore, open_store

BACKENDS = ["sqlite"]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'payflow.db'}"
    raise AssertionError(request.param)


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
