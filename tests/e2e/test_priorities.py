"""Payers first at WeChat: status polls never queue for its budget, and a create that cannot get any
answers 503 with Retry-After, its payment kept for the sweeper."""

from __future__ import annotations

import asyncio
import time

import pytest

from payflow.ratelimit import Budgets, Priority, RateLimiter
from payflow.states import State
from tests.e2e.conftest import World


async def test_polls_do_not_queue_ahead_of_a_create(world: World) -> None:
    numbers = [(await world.create(f"order-{i}"))["out_trade_no"] for i in range(40)]
    limiter = RateLimiter(rate=5, burst=1, waits={Priority.PAYER: 5.0})
    world.service.wechat.limiter = Budgets.shared(limiter)  # type: ignore[attr-defined]
    polls = [asyncio.get_running_loop().create_task(world.api("GET", f"/v1/payments/{no}")) for no in numbers]
    await asyncio.sleep(0)
    status, created = await world.api("POST", "/v1/payments", json={
        "order_id": "order-new", "amount": 1999, "description": "Coffee beans", "openid": "oNewPayer"})
    assert status == 201 and created["state"] == "prepaid"
    answers = await asyncio.gather(*polls)
    assert all(status == 200 and body["state"] == "prepaid" for status, body in answers)  # stored state
    assert limiter.waiting == 0  # no poll ever queued for a token


async def test_a_create_without_budget_answers_503_with_retry_after(world: World) -> None:
    limiter = RateLimiter(rate=0.5, burst=1, waits={Priority.PAYER: 0.05})
    world.service.wechat.limiter = Budgets.shared(limiter)  # type: ignore[attr-defined]
    await limiter.acquire(Priority.PAYER)  # spend the only token
    async with world.http.post(world.payflow.make_url("/v1/payments"), json={
            "order_id": "order-1", "amount": 1999, "description": "Coffee beans", "openid": "oPayer"},
            headers={"Authorization": f"Bearer {world.settings.api_token}"}) as response:
        assert response.status == 503
        assert int(response.headers["Retry-After"]) >= 1
        assert (await response.json())["error"]["code"] == "wechat_throttled"
    stored = await world.service.store.get_by_order_id("order-1")
    assert stored is not None and stored.state is State.CREATED  # kept: the sweeper places it later


@pytest.mark.parametrize("world_overrides", [{"wechat_timeout": 0.5}])
async def test_a_create_answers_within_the_wechat_timeout_when_wechat_hangs(world: World) -> None:
    world.wechat_faults(api_latency_min=3.0, api_latency_max=3.0)  # each attempt would run its 2 s timeout
    started = time.perf_counter()
    async with world.http.post(world.payflow.make_url("/v1/payments"), json={
            "order_id": "order-1", "amount": 1999, "description": "Coffee beans", "openid": "oPayer"},
            headers={"Authorization": f"Bearer {world.settings.api_token}"}) as response:
        elapsed = time.perf_counter() - started
        assert response.status == 503 and int(response.headers["Retry-After"]) >= 1
        assert (await response.json())["error"]["code"] == "wechat_unavailable"
    assert elapsed < 1.5  # PAYFLOW_WECHAT_TIMEOUT (0.5 s) bounds the whole placement, not each of 3 attempts
    stored = await world.service.store.get_by_order_id("order-1")
    assert stored is not None and stored.state is State.CREATED  # kept: the sweeper places it later
