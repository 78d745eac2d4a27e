"""The promise, end to end: paid at WeChat ⇒ paid at the backend, once in effect, whatever is lost."""

from __future__ import annotations

import asyncio

from payflow.states import State
from payflow.sweeper import Sweeper
from tests.e2e.conftest import World


async def test_happy_path_notification_forward_sync(world: World) -> None:
    created = await world.create("order-1")
    await world.pay(created["out_trade_no"])
    assert await world.notify() == 1
    payment = await world.payment(created["out_trade_no"])
    assert payment.state is State.SYNCED
    order = world.backend_order("order-1")
    assert order.status == "paid" and order.paid_events_received == 1 and order.duplicates == 0
    assert [(e.trigger, e.source) for e in await world.events(created["out_trade_no"])] == [
        ("create", "api"), ("prepay", "api"), ("pay", "notify"), ("sync", "backend")]


async def test_dropped_notification_is_found_by_the_sweeper(world: World) -> None:
    world.wechat_faults(never_deliver=1.0)
    created = await world.create("order-1")
    await world.pay(created["out_trade_no"])
    await world.notify()
    assert (await world.payment(created["out_trade_no"])).state is State.PREPAID
    world.advance(30)  # the first query of PAYFLOW_QUERY_SCHEDULE
    report = await world.sweep()
    assert report.claimed == 1 and report.failed == 0
    payment = await world.payment(created["out_trade_no"])
    assert payment.state is State.SYNCED
    triggers = [(e.trigger, e.source) for e in await world.events(created["out_trade_no"])]
    assert ("pay", "query") in triggers and triggers[-1] == ("sync", "backend")
    assert world.backend_order("order-1").status == "paid"


async def test_query_on_read_shows_paid_in_one_get(world: World) -> None:
    world.wechat_faults(never_deliver=1.0)
    created = await world.create("order-1")
    await world.pay(created["out_trade_no"])
    status, view = await world.api("GET", f"/v1/payments/{created['out_trade_no']}")
    assert status == 200 and view["paid"] is True and view["transaction_id"]
    await world.service.drain()
    assert (await world.payment(created["out_trade_no"])).state is State.SYNCED


async def test_query_on_read_is_throttled_and_shared(world: World) -> None:
    created = await world.create("order-1")
    path = f"/v1/payments/{created['out_trade_no']}"
    client = world.service.wechat
    real_query = client.query
    asked: list[str] = []

    async def counting(out_trade_no: str, appid: str | None = None) -> object:
        asked.append(out_trade_no)
        await asyncio.sleep(0)  # let the other readers arrive while this query is in flight
        return await real_query(out_trade_no, appid)

    client.query = counting  # type: ignore[method-assign]
    results = await asyncio.gather(*(world.api("GET", path) for _ in range(5)))
    assert [status for status, _ in results] == [200] * 5 and len(asked) == 1
    world.advance(1.5)
    await world.api("GET", path)
    assert len(asked) == 1  # still within 2 s of the last query
    world.advance(1)
    await world.api("GET", path)
    assert len(asked) == 2


async def test_backend_down_then_up(world: World) -> None:
    created = await world.create("order-1")
    world.backend_faults(error_rate=1.0)
    await world.pay(created["out_trade_no"])
    await world.notify()
    schedule = world.settings.forward_schedule
    for attempt in range(3):
        payment = await world.payment(created["out_trade_no"])
        assert payment.state is State.NOTIFIED and payment.attempts == attempt + 1
        world.advance(schedule[attempt])
        if attempt == 2:
            world.backend_faults()  # the backend is back
        await world.sweep()
    payment = await world.payment(created["out_trade_no"])
    assert payment.state is State.SYNCED
    order = world.backend_order("order-1")
    assert order.status == "paid" and order.paid_events_received == 1
    # Every failed attempt left its event, with the backend's answer, beside the schedule it set.
    failed = [e for e in await world.events(created["out_trade_no"]) if e.trigger == "forward_failed"]
    assert [(e.detail["attempt"], e.detail["status"], e.source) for e in failed] == [
        (1, 500, "backend"), (2, 500, "backend"), (3, 500, "backend")]
    assert all(e.from_state is e.to_state is State.NOTIFIED for e in failed)


async def test_applied_but_answer_lost_is_retried_into_one_paid_order(world: World) -> None:
    created = await world.create("order-1")
    world.backend_faults(lost_answer_rate=1.0)
    await world.pay(created["out_trade_no"])
    await world.notify()
    assert world.backend_order("order-1").status == "paid"  # applied ...
    payment = await world.payment(created["out_trade_no"])
    assert payment.state is State.NOTIFIED and payment.attempts == 1  # ... but payflow never heard
    world.backend_faults()
    world.advance(world.settings.forward_schedule[0])
    await world.sweep()
    assert (await world.payment(created["out_trade_no"])).state is State.SYNCED
    order = world.backend_order("order-1")
    assert order.status == "paid" and order.duplicates == 1 and order.paid_events_received == 2
    assert len(set(order.event_ids)) == 1  # one event_id for every retry


async def test_cancelled_at_the_backend_goes_to_review_with_the_answer(world: World) -> None:
    created = await world.create("order-1")
    await world.register_at_backend("order-1")
    world.cancel_at_backend("order-1")
    await world.pay(created["out_trade_no"])
    await world.notify()
    payment = await world.payment(created["out_trade_no"])
    assert payment.state is State.NEEDS_REVIEW
    last = (await world.events(created["out_trade_no"]))[-1]
    assert last.trigger == "flag" and last.detail["reason"] == "backend_rejected"
    assert last.detail["status"] == 409 and "ORDER_CANCELLED" in last.detail["body"]


async def test_forward_schedule_exhausted_goes_to_review(world: World) -> None:
    created = await world.create("order-1")
    world.backend_faults(error_rate=1.0)
    await world.pay(created["out_trade_no"])
    await world.notify()
    for delay in world.settings.forward_schedule:
        world.advance(delay)
        await world.sweep()
    payment = await world.payment(created["out_trade_no"])
    assert payment.state is State.NEEDS_REVIEW
    last = (await world.events(created["out_trade_no"]))[-1]
    assert last.detail["reason"] == "forward_exhausted" and last.detail["attempt"] == 16


async def test_expiry_closes_at_wechat_after_a_final_query(world: World) -> None:
    world.wechat_clock.offset = -5  # WeChat's clock runs behind: at our expiry it still says NOTPAY
    created = await world.create("order-1", expires_in=600)
    queries_at = []
    while (await world.payment(created["out_trade_no"])).state is State.PREPAID:
        world.clock.set((await world.payment(created["out_trade_no"])).next_attempt_at)
        queries_at.append(round((world.clock.now() - world.clock_start).total_seconds()))
        await world.sweep()
    # 30s, 1m, 2m, 5m, then 10m steps — capped at the expiry, where the final query happens
    assert queries_at == [30, 90, 210, 510, 600]
    assert world.wechat_order(created["out_trade_no"]).state == "CLOSED"  # closed by us, at WeChat
    last = (await world.events(created["out_trade_no"]))[-1]
    assert (last.trigger, last.source, last.detail["reason"]) == ("close", "sweeper", "expired")


async def test_wechat_auto_close_is_followed(world: World) -> None:
    created = await world.create("order-1", expires_in=600)
    world.advance(601)
    await world.sweep()
    assert (await world.payment(created["out_trade_no"])).state is State.CLOSED
    last = (await world.events(created["out_trade_no"]))[-1]
    assert (last.source, last.detail["reason"]) == ("query", "closed_at_wechat")


async def test_paid_just_before_expiry_is_paid_not_closed(world: World) -> None:
    world.wechat_faults(never_deliver=1.0)
    created = await world.create("order-1", expires_in=600)
    world.advance(599)
    await world.pay(created["out_trade_no"])
    world.advance(1)  # at expiry: the final query sees the payment
    await world.sweep()
    payment = await world.payment(created["out_trade_no"])
    assert payment.state is State.SYNCED and world.wechat_order(created["out_trade_no"]).state == "SUCCESS"


async def test_paid_between_final_query_and_close_means_pay(world: World) -> None:
    world.wechat_faults(never_deliver=1.0)
    world.wechat_clock.offset = -5
    created = await world.create("order-1", expires_in=600)
    no = created["out_trade_no"]
    client = world.service.wechat
    real_close = client.close_order

    async def payer_pays_first(out_trade_no: str) -> None:
        await world.pay(out_trade_no)  # the payer's confirmation lands just before our close
        await real_close(out_trade_no)

    client.close_order = payer_pays_first  # type: ignore[method-assign]
    world.advance(600)
    await world.sweep()
    payment = await world.payment(no)
    assert payment.state is State.SYNCED
    assert [e.trigger for e in await world.events(no)][-2:] == ["pay", "sync"]


async def test_payer_close(world: World) -> None:
    created = await world.create("order-1")
    status, view = await world.api("POST", f"/v1/payments/{created['out_trade_no']}/close")
    assert status == 200 and view["state"] == "closed" and view["paid"] is False
    assert world.wechat_order(created["out_trade_no"]).state == "CLOSED"
    # closing again is harmless
    status, again = await world.api("POST", f"/v1/payments/{created['out_trade_no']}/close")
    assert status == 200 and again["state"] == "closed"


async def test_payer_close_of_a_paid_payment_keeps_it_paid(world: World) -> None:
    world.wechat_faults(never_deliver=1.0)
    created = await world.create("order-1")
    await world.pay(created["out_trade_no"])
    status, view = await world.api("POST", f"/v1/payments/{created['out_trade_no']}/close")
    assert status == 200 and view["paid"] is True


async def test_two_sweepers_on_one_database_transition_once(world: World) -> None:
    from payflow.service import PaymentService
    from payflow.store import open_store

    world.wechat_faults(never_deliver=1.0)
    numbers = []
    for i in range(12):
        created = await world.create(f"order-{i}")
        await world.pay(created["out_trade_no"])
        numbers.append(created["out_trade_no"])
    world.advance(30)
    other_store = await open_store(world.settings.database_url)
    try:
        other = PaymentService(other_store, world.settings, wechat=world.service.wechat,
                               backend=world.service.backend, clock=world.clock)
        reports = await asyncio.gather(Sweeper(world.service, batch=5).run_once(),
                                       Sweeper(other, batch=5).run_once(),
                                       Sweeper(world.service, batch=5).run_once(),
                                       Sweeper(other, batch=5).run_once())
        await asyncio.gather(world.service.drain(), other.drain())
    finally:
        await other_store.close()
    assert sum(r.claimed for r in reports) == 12
    for no in numbers:
        triggers = [e.trigger for e in await world.events(no)]
        assert triggers == ["create", "prepay", "pay", "sync"], (no, triggers)
    for i in range(12):
        order = world.backend_order(f"order-{i}")
        assert order.status == "paid" and order.paid_events_received == 1
