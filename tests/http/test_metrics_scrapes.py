"""GET /metrics cannot be turned against the store: its gauges are read at most every few seconds and
concurrent scrapes share one read; PAYFLOW_METRICS_TOKEN closes it."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from payflow.app import create_app
from payflow.clock import FakeClock
from payflow.metrics import Metrics
from payflow.settings import Settings
from payflow.store import PaymentStore
from tests.conftest import ADMIN_TOKEN


async def test_scrapes_share_one_store_read_and_reuse_it(
    aiohttp_client: Any, settings: Settings, sqlite_store: PaymentStore, clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads = 0
    gate = asyncio.Event()
    real = sqlite_store.count_by_state

    async def counted() -> Any:
        nonlocal reads
        reads += 1
        await gate.wait()
        return await real()

    monkeypatch.setattr(sqlite_store, "count_by_state", counted)
    client = await aiohttp_client(create_app(settings, store=sqlite_store, run_sweeper=False, clock=clock,
                                             metrics=Metrics(gauges_max_age=5.0)))
    scrapes = [asyncio.get_running_loop().create_task(client.get("/metrics")) for _ in range(8)]
    for _ in range(50):
        await asyncio.sleep(0)
        if reads:
            break
    gate.set()
    for response in await asyncio.gather(*scrapes):
        assert response.status == 200 and "payflow_payments" in await response.text()
    assert reads == 1  # eight concurrent scrapes, one read
    clock.advance(4.9)
    assert (await client.get("/metrics")).status == 200
    assert reads == 1  # still fresh: no read at all
    clock.advance(0.2)
    assert (await client.get("/metrics")).status == 200
    assert reads == 2


async def test_a_metrics_token_closes_the_endpoint(
    aiohttp_client: Any, settings: Settings, sqlite_store: PaymentStore,
) -> None:
    closed = dataclasses.replace(settings, metrics_token="scrape-secret")
    client = await aiohttp_client(create_app(closed, store=sqlite_store, run_sweeper=False))
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/metrics", headers={"Authorization": "Bearer wrong"})).status == 401
    for token in ("scrape-secret", ADMIN_TOKEN):
        assert (await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})).status == 200
