"""Refunds and closed payments end to end: payflow, the WeChat simulator and the backend simulator on one fake
clock. The promise in the other direction: refunded at WeChat ⇒ the backend hears it, whatever is lost."""

from __future__ import annotations

from typing import Any

import pytest
import structlog

from payflow.states import State
from payflow.states.refunds import RefundState
from tests.e2e.conftest import World


async def _paid(world: World, order_id: str = "order-1", amount: int = 1999) -> str:
    created = await world.create(order_id, amount)
    await world.pay(created["out_trade_no"])
    await world.notify()
    assert (await world.payment(created["out_trade_no"])).state is State.SYNCED
    return str(created["out_trade_no"])


async def _refund(world: World, out_trade_no: str, **body: Any) -> tuple[int, Any]:
    return await world.api("POST", f"/v1/payments/{out_trade_no}/refunds", json=body)


async def test_a_full_refund_reaches_the_backend_and_refunds_the_payment(world: World) -> None:
    no = await _paid(world)
    status, refund = await _refund(world, no, amount=1999, reason="out of stock")
    assert status == 201, refund
    assert refund["state"] == "processing" and refund["refund_id"] and refund["out_trade_no"] == no
    assert set(refund) == {"out_refund_no", "out_trade_no", "state", "amount", "reason", "refund_id", "created_at",
                           "succeeded_at", "failure"}
    assert await world.notify() == 1  # REFUND.SUCCESS
    stored = await world.service.store.get_refund(refund["out_refund_no"])
    assert stored is not None and stored.state is RefundState.SYNCED and stored.succeeded_at is not None
    assert (await world.payment(no)).state is State.REFUNDED
    order = world.backend_order("order-1")
    assert order.refunds == {refund["out_refund_no"]: 1999} and order.status == "paid"
    status, view = await world.api("GET", f"/v1/payments/{no}")
    assert status == 200 and view["state"] == "refunded" and view["refunded_amount"] == 1999 and view["paid"]
    status, read = await world.api("GET", f"/v1/refunds/{refund['out_refund_no']}")
    assert status == 200 and read["state"] == "synced" and read["succeeded_at"]
    events = await world.service.store.refund_events(refund["out_refund_no"])
    assert [(e.trigger, e.source) for e in events] == [
        ("create", "api"), ("accept", "api"), ("succeed", "notify"), ("sync", "backend")]
    assert world.wechat_order(no).refunded_amount == 1999


async def test_partial_refunds_leave_the_payment_until_they_reach_its_amount(world: World) -> None:
    no = await _paid(world)
    first = await _refund(world, no, amount=999, out_refund_no="part-1")
    assert first[0] == 201
    await world.notify()
    assert (await world.payment(no)).state is State.SYNCED  # partial: the payment stays where it is
    status, error = await _refund(world, no, amount=1001)
    assert status == 422 and error["error"]["code"] == "refund_exceeds_payment"
    assert error["error"]["refundable"] == 1000
    assert (await _refund(world, no, amount=1000, out_refund_no="part-2"))[0] == 201
    await world.notify()
    assert (await world.payment(no)).state is State.REFUNDED
    assert world.backend_order("order-1").refunds == {"part-1": 999, "part-2": 1000}
    status, listing = await world.api("GET", f"/v1/payments/{no}/refunds")
    assert status == 200 and [r["out_refund_no"] for r in listing["refunds"]] == ["part-1", "part-2"]


async def test_the_same_out_refund_no_is_the_same_refund(world: World) -> None:
    no = await _paid(world)
    status, first = await _refund(world, no, amount=500, out_refund_no="R-7", reason="damaged")
    assert status == 201
    status, again = await _refund(world, no, amount=500, out_refund_no="R-7", reason="damaged")
    assert status == 200 and again["out_refund_no"] == "R-7" and again["refund_id"] == first["refund_id"]
    status, other = await _refund(world, no, amount=600, out_refund_no="R-7", reason="damaged")
    assert status == 409 and other["error"]["code"] == "refund_conflict"
    assert len(await world.service.store.refunds_of(no)) == 1
    assert len(world.wechat_order(no).refunds) == 1


async def test_an_unpaid_payment_is_not_refunded(world: World) -> None:
    created = await world.create("order-1")
    status, error = await _refund(world, created["out_trade_no"], amount=100)
    assert status == 409 and error["error"]["code"] == "not_refundable" and error["error"]["state"] == "prepaid"
    status, error = await _refund(world, created["out_trade_no"], amount=0)
    assert status == 422 and error["error"]["field"] == "amount"
    status, error = await _refund(world, "PF-nope-00001", amount=1)
    assert status == 404
    status, error = await world.api("GET", "/v1/refunds/nope")
    assert status == 404


async def test_wechat_unreachable_answers_503_and_the_sweeper_submits_the_stored_refund(world: World) -> None:
    no = await _paid(world)
    world.wechat_faults(api_500=1.0)
    status, error = await _refund(world, no, amount=1999)
    assert status == 503 and error["error"]["code"] == "refund_deferred"
    out_refund_no = error["error"]["out_refund_no"]
    stored = await world.service.store.get_refund(out_refund_no)
    assert stored is not None and stored.state is RefundState.CREATED and stored.next_attempt_at is not None
    assert world.wechat_order(no).refunds == []
    world.wechat_faults()
    world.advance(world.settings.refund_query_schedule[0] + 1)
    report = await world.sweep()
    assert report.outcomes.get("refund_submit:processing") == 1, report
    await world.notify()
    assert (await world.service.store.get_refund(out_refund_no)).state is RefundState.SYNCED  # type: ignore[union-attr]
    # The client retrying with the out_refund_no it was given gets the one refund, not a second.
    status, again = await _refund(world, no, amount=1999, out_refund_no=out_refund_no)
    assert status == 200 and again["state"] == "synced"
    assert len(world.wechat_order(no).refunds) == 1


async def test_a_lost_refund_notification_is_found_by_the_sweeper(world: World) -> None:
    no = await _paid(world)
    world.wechat_faults(never_deliver=1.0)
    status, refund = await _refund(world, no, amount=1999)
    assert status == 201
    await world.notify()
    assert (await world.service.store.get_refund(refund["out_refund_no"])).state is RefundState.PROCESSING  # type: ignore[union-attr]
    world.advance(world.settings.refund_query_schedule[0] + 1)
    report = await world.sweep()
    assert report.outcomes.get("refund_query:synced") == 1, report
    assert world.backend_order("order-1").refunds == {refund["out_refund_no"]: 1999}
    assert (await world.payment(no)).state is State.REFUNDED


async def test_query_on_read_shows_a_refund_succeeded(world: World) -> None:
    no = await _paid(world)
    world.wechat_faults(never_deliver=1.0)
    _, refund = await _refund(world, no, amount=100)
    status, read = await world.api("GET", f"/v1/refunds/{refund['out_refund_no']}")
    assert status == 200 and read["state"] == "succeeded"  # WeChat was asked; the backend is told meanwhile
    await world.service.drain()
    assert world.backend_order("order-1").refunds == {refund["out_refund_no"]: 100}


async def test_the_backend_down_delays_refund_succeeded_until_it_acknowledges(world: World) -> None:
    no = await _paid(world)
    world.backend_faults(error_rate=1.0)
    _, refund = await _refund(world, no, amount=1999)
    await world.notify()
    stored = await world.service.store.get_refund(refund["out_refund_no"])
    assert stored is not None and stored.state is RefundState.SUCCEEDED and stored.attempts == 1
    world.backend_faults()
    world.advance(world.settings.forward_schedule[0] + 1)
    report = await world.sweep()
    assert report.outcomes.get("refund_forward:synced") == 1, report
    assert world.backend_order("order-1").refunds == {refund["out_refund_no"]: 1999}
    triggers = [e.trigger for e in await world.service.store.refund_events(refund["out_refund_no"])]
    assert triggers == ["create", "accept", "succeed", "forward_failed", "sync"]


async def test_an_abnormal_refund_is_parked_then_closed_and_told_as_failed(world: World) -> None:
    no = await _paid(world)
    world.wechat_faults(refund_abnormal=1.0)
    with structlog.testing.capture_logs() as logged:
        _, refund = await _refund(world, no, amount=1999)
        await world.notify()
    stored = await world.service.store.get_refund(refund["out_refund_no"])
    assert stored is not None and stored.state is RefundState.ABNORMAL
    assert any(e["event"] == "alert.refund_abnormal" for e in logged)
    async with world.http.post(world.wechat.make_url(f"/sim/v1/refunds/{refund['out_refund_no']}/close")) as answer:
        assert answer.status == 200
    await world.notify()  # REFUND.CLOSED
    closed = await world.service.store.get_refund(refund["out_refund_no"])
    assert closed is not None and closed.state is RefundState.CLOSED and closed.next_attempt_at is None
    assert world.backend_order("order-1").failed_refunds == [refund["out_refund_no"]]
    assert (await world.payment(no)).state is State.SYNCED
    # What was closed can be refunded again, under a new out_refund_no.
    world.wechat_faults()
    assert (await _refund(world, no, amount=1999))[0] == 201


async def test_a_refund_notification_with_another_amount_changes_nothing(world: World) -> None:
    no = await _paid(world)
    world.wechat_faults(never_deliver=1.0)
    _, refund = await _refund(world, no, amount=1000)
    stored = await world.service.store.get_refund(refund["out_refund_no"])
    assert stored is not None
    from payflow.models import Notification
    from payflow.wechat.notify import VerifiedNotification

    resource = {"mchid": world.keys.mchid, "out_trade_no": no, "out_refund_no": stored.out_refund_no,
                "refund_id": stored.refund_id, "refund_status": "SUCCESS",
                "amount": {"total": 1999, "refund": 1999, "payer_total": 1999, "payer_refund": 1999}}
    note = VerifiedNotification(notification_id="EV-X", event_type="REFUND.SUCCESS", create_time="", resource=resource,
                                transaction=None, resource_json="")
    row = Notification("EV-X", world.clock.now(), "REFUND.SUCCESS", no, "", resource)
    assert await world.service.refunding.handle_notification(note, row) == "refund_mismatch"
    assert (await world.service.store.get_refund(stored.out_refund_no)).state is RefundState.PROCESSING  # type: ignore[union-attr]
    assert (await world.service.store.get_notification("EV-X")).outcome == "refund_mismatch"  # type: ignore[union-attr]


async def test_a_closed_payment_is_told_to_the_backend_once(world: World) -> None:
    created = await world.create("order-1")
    status, _ = await world.api("POST", f"/v1/payments/{created['out_trade_no']}/close")
    assert status == 200
    payment = await world.payment(created["out_trade_no"])
    assert payment.state is State.CLOSED and payment.next_attempt_at is not None
    report = await world.sweep()
    assert report.outcomes.get("closed_event:acked") == 1
    order = world.backend_order("order-1")
    assert len(order.closed_events) == 1
    assert (await world.payment(created["out_trade_no"])).next_attempt_at is None
    assert (await world.sweep()).claimed == 0
    assert (await world.events(created["out_trade_no"]))[-1].trigger == "closed_event_acked"


async def test_a_closed_event_the_backend_misses_is_retried(world: World) -> None:
    created = await world.create("order-1")
    await world.api("POST", f"/v1/payments/{created['out_trade_no']}/close")
    world.backend_faults(error_rate=1.0)
    assert (await world.sweep()).outcomes.get("closed_event:retry") == 1
    world.backend_faults()
    world.advance(world.settings.forward_schedule[0] + 1)
    assert (await world.sweep()).outcomes.get("closed_event:acked") == 1
    assert len(world.backend_order("order-1").closed_events) == 1


@pytest.mark.parametrize("world_overrides", [{"auto_refund": frozenset({"backend_rejected"})}])
async def test_a_payment_the_backend_rejects_is_refunded_automatically(world: World) -> None:
    created = await world.create("order-1")
    await world.register_at_backend("order-1")
    world.cancel_at_backend("order-1")
    await world.pay(created["out_trade_no"])
    await world.notify()  # paid → forwarded → 409 → needs_review → automatic refund (background)
    await world.service.drain()
    no = created["out_trade_no"]
    refund = await world.service.store.get_refund(f"auto-{no}")
    assert refund is not None and refund.origin == "auto" and refund.cause == "backend_rejected"
    await world.notify()
    assert (await world.payment(no)).state is State.REFUNDED
    assert world.backend_order("order-1").refunds == {f"auto-{no}": 1999}


@pytest.mark.parametrize("world_overrides", [{"auto_refund": frozenset({"backend_rejected"})}])
async def test_the_sweeper_makes_an_automatic_refund_a_crash_left_out(world: World) -> None:
    created = await world.create("order-1")
    await world.register_at_backend("order-1")
    world.cancel_at_backend("order-1")
    world.service.core.on_flagged.clear()  # as if the process died right after the flag
    await world.pay(created["out_trade_no"])
    await world.notify()
    no = created["out_trade_no"]
    assert (await world.payment(no)).state is State.NEEDS_REVIEW
    assert await world.service.store.refunds_of(no) == []
    report = await world.sweep()
    assert report.outcomes.get("auto_refund") == 1
    assert (await world.service.store.get_refund(f"auto-{no}")) is not None


async def test_an_operator_refunds_a_payment_in_review(world: World) -> None:
    created = await world.create("order-1")
    await world.register_at_backend("order-1")
    world.cancel_at_backend("order-1")
    await world.pay(created["out_trade_no"])
    await world.notify()
    no = created["out_trade_no"]
    assert (await world.payment(no)).state is State.NEEDS_REVIEW
    status, error = await world.api("POST", f"/v1/admin/payments/{no}/refund", json={})
    assert status == 422 and error["error"]["field"] == "note"
    status, refund = await world.api("POST", f"/v1/admin/payments/{no}/refund",
                                     json={"note": "order cancelled, refund the payer"})
    assert status == 201 and refund["amount"] == 1999 and refund["state"] == "processing"
    await world.notify()
    assert (await world.payment(no)).state is State.REFUNDED
    events = await world.events(no)
    assert ("refund_requested", "admin") in [(e.trigger, e.source) for e in events]
    assert events[-1].trigger == "refund"
    synced = await _paid(world, "order-2")
    status, error = await world.api("POST", f"/v1/admin/payments/{synced}/refund", json={"note": "x"})
    assert status == 409 and error["error"]["state"] == "synced"


async def test_metrics_count_refunds(world: World) -> None:
    no = await _paid(world)
    await _refund(world, no, amount=100)
    await world.notify()
    async with world.http.get(world.payflow.make_url("/metrics")) as response:
        text = await response.text()
    assert 'payflow_refunds{state="synced"} 1.0' in text
    assert 'payflow_refunds_total{outcome="created"} 1.0' in text
    assert 'payflow_refunds_total{outcome="succeeded"} 1.0' in text


@pytest.mark.parametrize("world_overrides", [{"auto_refund": frozenset({"amount_mismatch"})}])
async def test_a_payment_of_the_wrong_amount_is_refunded_what_was_paid(world: World) -> None:
    created = await world.create("order-1", 1999)
    no = created["out_trade_no"]
    await world.pay(no, amount=1500)
    await world.notify()
    await world.service.drain()
    refund = await world.service.store.get_refund(f"auto-{no}")
    assert refund is not None and refund.amount == 1500 and refund.cause == "amount_mismatch"
    await world.notify()
    assert (await world.payment(no)).state is State.REFUNDED
    assert world.wechat_order(no).refunded_amount == 1500
    assert world.backend_order("order-1").refunds == {f"auto-{no}": 1500}


@pytest.mark.parametrize("world_overrides", [{"auto_refund": frozenset({"paid_after_close"})}])
async def test_a_payment_paid_after_it_was_closed_is_refunded(world: World) -> None:
    from payflow.states import Source, Trigger

    world.wechat_faults(drop_first=1.0)
    created = await world.create("order-1")
    no = created["out_trade_no"]
    await world.pay(no)
    await world.notify()  # the first send is lost
    payment = await world.payment(no)
    await world.service.core.apply(payment, Trigger.CLOSE, source=Source.SWEEPER)  # closed on a stale view
    world.wechat_faults()
    world.advance(20)
    await world.notify()  # WeChat's retry: paid after close → needs_review → refunded automatically
    await world.service.drain()
    await world.notify()
    assert (await world.payment(no)).state is State.REFUNDED
    refund = await world.service.store.get_refund(f"auto-{no}")
    assert refund is not None and refund.cause == "paid_after_close" and refund.state is RefundState.SYNCED
    assert world.backend_order("order-1").refunds == {f"auto-{no}": 1999}


async def test_without_auto_refund_a_parked_payment_waits_for_a_person(world: World) -> None:
    created = await world.create("order-1", 1999)
    await world.pay(created["out_trade_no"], amount=1500)
    await world.notify()
    await world.service.drain()
    assert (await world.payment(created["out_trade_no"])).state is State.NEEDS_REVIEW
    assert await world.service.store.refunds_of(created["out_trade_no"]) == []
    assert (await world.sweep()).outcomes.get("auto_refund") is None
