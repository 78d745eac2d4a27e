"""The WeChat limiter: payers first, status polls never wait, background work bounded — on a hand-driven clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from payflow import errors
from payflow.ratelimit import DEFAULT_BUDGETS, Budgets, Priority, RateLimiter, Throttled, priority


class ManualTime:
    """A monotonic clock and a timer that only move when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, Callable[[], None]]] = []

    def monotonic(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.timers.append((self.now + delay, callback))

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [t for t in self.timers if t[0] <= self.now]
        self.timers = [t for t in self.timers if t[0] > self.now]
        for _, callback in due:
            callback()
        await _settle()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def _limiter(clock: ManualTime, **waits: float) -> RateLimiter:
    bounds = {Priority[name.upper()]: value for name, value in waits.items()}
    return RateLimiter(rate=1.0, burst=1, waits=bounds, monotonic=clock.monotonic, timer=clock.call_later)


async def test_a_payer_is_served_before_background_work_that_queued_first() -> None:
    clock = ManualTime()
    limiter = _limiter(clock, background=100.0, payer=100.0)
    await limiter.acquire(Priority.BACKGROUND)  # the one token of the burst
    served: list[str] = []

    async def take(name: str, level: Priority) -> None:
        await limiter.acquire(level)
        served.append(name)

    loop = asyncio.get_running_loop()
    background = [loop.create_task(take(f"sweep-{i}", Priority.BACKGROUND)) for i in range(20)]
    await _settle()
    payer = loop.create_task(take("payer", Priority.PAYER))
    await _settle()
    await clock.advance(1.0)  # one token
    assert served == ["payer"]
    for _ in range(20):
        await clock.advance(1.0)
    assert served == ["payer"] + [f"sweep-{i}" for i in range(20)]  # then background, in arrival order
    await asyncio.gather(payer, *background)


async def test_a_status_poll_never_waits_and_yields_to_a_waiting_payer() -> None:
    clock = ManualTime()
    limiter = _limiter(clock, payer=100.0)
    await limiter.acquire(Priority.READ)  # a free token: taken at once
    with pytest.raises(Throttled) as refused:
        await limiter.acquire(Priority.READ)  # none left: refused, not queued
    assert isinstance(refused.value, errors.WechatRetryable) and refused.value.retry_after == pytest.approx(1.0)
    payer = asyncio.get_running_loop().create_task(limiter.acquire(Priority.PAYER))
    await _settle()
    clock.now += 1.0  # a token is free again, but the payer waiting for it comes first
    with pytest.raises(Throttled):
        await limiter.acquire(Priority.READ)
    await clock.advance(0.0)
    await payer


async def test_background_gives_up_after_its_bound_and_takes_no_token() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, waits={Priority.BACKGROUND: 0.05})
    await limiter.acquire(Priority.BACKGROUND)
    with pytest.raises(Throttled, match="within 0.05s"):
        await limiter.acquire(Priority.BACKGROUND)  # the bound is the event loop's time: 50 ms
    assert limiter.waiting == 0


async def test_the_callers_context_sets_the_class() -> None:
    clock = ManualTime()
    limiter = _limiter(clock, background=100.0)
    await limiter.acquire()
    with priority(Priority.READ):
        with pytest.raises(Throttled):
            await limiter.acquire()  # READ from the context: refused, not queued
    assert limiter.waiting == 0


async def test_a_pause_holds_every_class() -> None:
    clock = ManualTime()
    limiter = _limiter(clock, payer=100.0)
    limiter.pause(5.0)
    assert limiter.paused_for == 5.0
    payer = asyncio.get_running_loop().create_task(limiter.acquire(Priority.PAYER))
    await clock.advance(4.0)
    assert not payer.done()
    await clock.advance(1.0)
    assert payer.done()


def _budgets(clock: ManualTime, **rates: float) -> Budgets:
    waits = {Priority.PAYER: 5.0, Priority.BACKGROUND: 30.0}
    return Budgets(rates, default=1.0, waits=waits, monotonic=clock.monotonic, timer=clock.call_later)


async def test_a_sweep_storm_on_queries_leaves_placement_its_whole_budget() -> None:
    clock = ManualTime()
    budgets = _budgets(clock, jsapi=10.0, query=1.0)
    loop = asyncio.get_running_loop()
    storm = [loop.create_task(budgets.acquire("query", Priority.BACKGROUND)) for _ in range(200)]
    await _settle()
    assert budgets.limiter("query").waiting == 199  # one token of the burst; the rest queue
    # Placement draws on its own budget: ten payers get theirs at once, none queues behind the storm.
    for _ in range(10):
        await asyncio.wait_for(budgets.acquire("jsapi", Priority.PAYER), 0.1)
    assert budgets.limiter("jsapi").waiting == 0
    with pytest.raises(Throttled):  # a status poll is refused at once, not queued behind the sweep either
        await budgets.acquire("query", Priority.READ)
    await clock.advance(1.0)  # the query budget refills at its own rate: one more sweep query
    assert sum(task.done() for task in storm) == 2
    for task in storm:
        task.cancel()
    await asyncio.gather(*storm, return_exceptions=True)


async def test_wechat_429_pauses_only_the_api_that_answered_it() -> None:
    clock = ManualTime()
    budgets = _budgets(clock, jsapi=10.0, query=10.0)
    budgets.pause("query", 1.0)
    assert budgets.limiter("query").paused_for == 1.0 and budgets.limiter("jsapi").paused_for == 0.0
    await asyncio.wait_for(budgets.acquire("jsapi", Priority.PAYER), 0.1)


def test_budgets_name_their_rates_and_fall_back_to_the_default() -> None:
    budgets = Budgets({"jsapi": 7.0}, default=3.0)
    assert budgets.limiter("jsapi").rate == 7.0
    assert budgets.limiter("query").rate == DEFAULT_BUDGETS["query"]  # a default budget stays
    assert budgets.limiter("certificates").rate == 3.0  # an API with no budget at all gets `default`
    assert budgets.limiter("jsapi") is budgets.limiter("jsapi")
    shared = RateLimiter(rate=2.0)
    one = Budgets.shared(shared)
    assert one.limiter("jsapi") is one.limiter("query") is shared
