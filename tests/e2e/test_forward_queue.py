"""First forwards are queued: bounded towards the backend, one at a time while notifications are in flight,
and left to the sweeper when they wait past their lease or find the queue full."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from payflow.states import State
from simulator.wechat.appkeys import NOTIFIER
from tests.e2e.conftest import World


class HeldBackend:
    """Wraps the backend client: every delivery waits for `gate`; counts deliveries in flight."""

    def __init__(self, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gate = asyncio.Event()
        self.in_flight = 0
        self.peak = 0
        self.delivered: list[str] = []
        backend = world.service.backend
        assert backend is not None
        real = backend.deliver

        async def held(payment: Any) -> Any:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            try:
                await self.gate.wait()
                self.delivered.append(payment.out_trade_no)
                return await real(payment)
            finally:
                self.in_flight -= 1

        monkeypatch.setattr(backend, "deliver", held)


async def _settle() -> None:
    for _ in range(20):  # let every ready task run up to its next real wait
        await asyncio.sleep(0)


async def _paid_at_wechat(world: World, count: int) -> list[str]:
    numbers = []
    for i in range(count):
        created = await world.create(f"order-{i}")
        await world.pay(created["out_trade_no"])
        numbers.append(created["out_trade_no"])
    return numbers


async def _deliver_notifications(world: World) -> int:
    """WeChat's notifier delivers what is due; unlike world.notify(), does not wait for the forwards."""
    return await world.wechat.app[NOTIFIER].deliver_due(world.wechat_clock.now())


@pytest.mark.parametrize("world_overrides", [{"forward_concurrency": 3}])
async def test_forwards_are_bounded_and_yield_to_notifications(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = HeldBackend(world, monkeypatch)
    numbers = await _paid_at_wechat(world, 6)

    with world.service.forwarding.handling_notification():  # as if WeChat kept notifying
        assert await _deliver_notifications(world) == 6
        await _settle()
        assert backend.in_flight == 1 and backend.peak == 1  # acknowledgements first
    await _settle()
    assert backend.in_flight == 3 and backend.peak == 3  # quiet again: up to forward_concurrency

    backend.gate.set()
    await world.service.drain()
    assert sorted(backend.delivered) == sorted(numbers) and backend.peak == 3
    for number in numbers:
        assert (await world.payment(number)).state is State.SYNCED
    assert [world.backend_order(f"order-{i}").paid_events_received for i in range(6)] == [1] * 6


@pytest.mark.parametrize("world_overrides", [{"forward_concurrency": 1}])
async def test_a_forward_that_waited_past_its_lease_is_left_to_the_sweeper(
    world: World, monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = HeldBackend(world, monkeypatch)
    first, second = await _paid_at_wechat(world, 2)
    assert await _deliver_notifications(world) == 2
    await _settle()
    assert backend.in_flight == 1  # one forwarder: the second payment waits in the queue

    world.advance(world.service.settings.lease + 1)
    backend.gate.set()
    await world.service.drain()
    assert backend.delivered == [first]  # the second's lease ran out while it waited: not forwarded here
    assert (await world.payment(second)).state is State.NOTIFIED

    report = await world.sweep()
    assert report.claimed == 1
    assert (await world.payment(second)).state is State.SYNCED
    assert backend.delivered == [first, second]  # each forwarded once


@pytest.mark.parametrize("world_overrides", [{"forward_concurrency": 1, "forward_backlog": 1}])
async def test_a_full_backlog_leaves_the_payment_to_the_sweeper(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = HeldBackend(world, monkeypatch)
    numbers = await _paid_at_wechat(world, 3)
    assert await _deliver_notifications(world) == 3
    await _settle()
    backend.gate.set()
    await world.service.drain()
    # At most one in flight and one queued: whatever did not fit was not forwarded here.
    left = set(numbers) - set(backend.delivered)
    assert 1 <= len(left) <= 2
    for number in left:
        assert (await world.payment(number)).state is State.NOTIFIED  # durably paid, only its forward is late

    world.advance(world.service.settings.lease + 1)
    await world.sweep()
    for number in numbers:
        assert (await world.payment(number)).state is State.SYNCED
    assert sorted(backend.delivered) == sorted(numbers)  # each forwarded once
