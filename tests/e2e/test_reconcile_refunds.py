"""Reconciliation of refunds against the simulator's real trade bill: REFUND lines matched to refund records,
refunds healed by the bill, refunds made outside payflow (REFUND_UNKNOWN), succeeded refunds no bill listed
(REFUND_MISSING), and re-runs that record nothing twice."""

from __future__ import annotations

import datetime as dt
from typing import Any

from payflow import models
from payflow.clock import SHANGHAI
from payflow.reconcile import BANK_MISS_AFTER_DAYS, Reconciler
from payflow.states import State
from payflow.states.refunds import RefundState, RefundTrigger
from tests.e2e.conftest import World


def _today(world: World) -> dt.date:
    return world.clock.now().astimezone(SHANGHAI).date()


def _reconciler(world: World) -> Reconciler:
    return Reconciler(world.service, world.service.wechat)  # type: ignore[arg-type]


async def _paid(world: World, order_id: str = "order-1", amount: int = 1999) -> str:
    created = await world.create(order_id, amount)
    await world.pay(created["out_trade_no"])
    await world.notify()
    assert (await world.payment(created["out_trade_no"])).state is State.SYNCED
    return str(created["out_trade_no"])


async def _refund(world: World, out_trade_no: str, **body: Any) -> tuple[int, Any]:
    return await world.api("POST", f"/v1/payments/{out_trade_no}/refunds", json=body)


async def _stored(world: World, out_refund_no: str) -> models.Refund:
    refund = await world.service.store.get_refund(out_refund_no)
    assert refund is not None
    return refund


async def _refund_outside(world: World, out_trade_no: str, amount: int) -> dict[str, Any]:
    """A refund made on the merchant platform: WeChat refunds it, payflow never asked for it."""
    url = world.wechat.make_url(f"/sim/v1/transactions/{out_trade_no}/refunds")
    async with world.http.post(url, json={"amount": amount}) as response:
        assert response.status == 201, await response.text()
        return await response.json()  # type: ignore[no-any-return]


async def test_a_succeeded_refund_is_matched_and_billed(world: World) -> None:
    no = await _paid(world)
    status, refund = await _refund(world, no, amount=500, out_refund_no="part-1")
    assert status == 201, refund
    await world.notify()  # REFUND.SUCCESS
    assert (await _stored(world, "part-1")).state is RefundState.SYNCED
    events = await world.service.store.refund_events("part-1")

    day = _today(world)
    report = await _reconciler(world).run(day)
    assert report.clean and report.run.status == "clean", report.discrepancies
    assert report.run.counts["refund_matched"] == 1 and report.run.counts["reconciled"] == 1
    assert report.run.counts["lines"] == 2 and report.run.counts["refund_missing"] == 0
    stored = await _stored(world, "part-1")
    assert stored.billed_on == day and stored.state is RefundState.SYNCED
    assert await world.service.store.refund_events("part-1") == events  # matched, not moved
    assert (await world.payment(no)).state is State.RECONCILED  # partial: the payment is reconciled as any other


async def test_a_partial_and_a_full_refund_refund_the_payment_and_reconcile_cleanly(world: World) -> None:
    no = await _paid(world)
    assert (await _refund(world, no, amount=999, out_refund_no="part-1"))[0] == 201
    await world.notify()
    assert (await _refund(world, no, amount=1000, out_refund_no="part-2"))[0] == 201
    await world.notify()
    assert (await world.payment(no)).state is State.REFUNDED
    payment_events = await world.events(no)

    day = _today(world)
    report = await _reconciler(world).run(day)
    assert report.clean, report.discrepancies
    assert report.run.counts["refund_matched"] == 2 and report.run.counts["refunded"] == 1
    assert "in_review" not in report.run.counts and "reconciled" not in report.run.counts
    assert {(await _stored(world, no_)).billed_on for no_ in ("part-1", "part-2")} == {day}
    assert (await world.payment(no)).state is State.REFUNDED  # not flagged, not moved
    assert await world.events(no) == payment_events


async def test_a_reconciled_payment_whose_refunds_reached_its_amount_is_settled_refunded(world: World) -> None:
    no = await _paid(world)
    world.wechat_faults(never_deliver=1.0)
    status, refund = await _refund(world, no, amount=1999, out_refund_no="full-1")
    assert status == 201, refund
    stored = await _stored(world, "full-1")
    assert stored.state is RefundState.PROCESSING and stored.refund_id
    # Recorded succeeded without the payment being settled (as if the process died between the two).
    await world.service.store.transition_refund(
        stored, RefundState.SUCCEEDED, RefundTrigger.SUCCEED, source="query", at=world.clock.now(),
        changes={"succeeded_at": world.clock.now()})
    assert (await world.payment(no)).state is State.SYNCED

    report = await _reconciler(world).run(_today(world))
    assert report.clean, report.discrepancies
    assert report.run.counts["reconciled"] == 1 and report.run.counts["refund_matched"] == 1
    assert [e.trigger for e in await world.events(no)][-2:] == ["reconcile", "refund"]
    assert (await world.payment(no)).state is State.REFUNDED


async def test_a_refund_made_outside_payflow_is_refund_unknown_and_flags_the_payment(world: World) -> None:
    no = await _paid(world)
    outside = await _refund_outside(world, no, 300)
    await world.notify()  # REFUND.SUCCESS of a refund payflow does not know: recorded, nothing moved
    assert (await world.payment(no)).state is State.SYNCED

    day = _today(world)
    report = await _reconciler(world).run(day)
    [found] = report.discrepancies
    assert (found.category, found.out_trade_no) == ("REFUND_UNKNOWN", no)
    assert found.detail["out_refund_no"] == outside["out_refund_no"]
    assert found.detail["refund_id"] == outside["refund_id"] and found.detail["refund_amount"] == 300
    assert found.detail["transaction_id"] == (await world.payment(no)).transaction_id
    assert report.run.status == "discrepancies" and report.run.counts["refund_unknown"] == 1
    payment = await world.payment(no)
    assert payment.state is State.NEEDS_REVIEW  # parked before its SUCCESS line could reconcile it
    assert report.run.counts["in_review"] == 1
    events = await world.events(no)
    assert (events[-1].trigger, events[-1].source, events[-1].detail["reason"]) == ("flag", "bill", "refund_seen")
    assert await world.service.store.refunds_of(no) == []

    again = await _reconciler(world).run(day)
    assert again.discrepancies == report.discrepancies and again.run.counts["refund_unknown"] == 1
    assert await world.events(no) == events


async def test_a_refund_whose_notification_and_queries_were_lost_is_healed_by_the_bill(world: World) -> None:
    no = await _paid(world)
    world.wechat_faults(never_deliver=1.0, refund_delay=60)
    status, refund = await _refund(world, no, amount=1999)
    assert status == 201 and refund["state"] == "processing"
    world.advance(61)  # WeChat completes it; its notification is never delivered, and no sweep ever runs
    await world.notify()
    out_refund_no = refund["out_refund_no"]
    assert (await _stored(world, out_refund_no)).state is RefundState.PROCESSING
    assert world.backend_order("order-1").refunds == {}

    day = _today(world)
    report = await _reconciler(world).run(day)
    await world.service.drain()
    assert report.clean, report.discrepancies
    assert report.run.counts["refund_healed"] == 1
    assert report.run.counts["refunded"] == 1  # the healed refund settled the payment before its SUCCESS line
    stored = await _stored(world, out_refund_no)
    assert stored.state is RefundState.SYNCED and stored.billed_on == day
    assert stored.succeeded_at is not None and stored.refund_id == refund["refund_id"]
    events = await world.service.store.refund_events(out_refund_no)
    assert [(e.trigger, e.source) for e in events][-2:] == [("succeed", "bill"), ("sync", "backend")]
    assert world.backend_order("order-1").refunds == {out_refund_no: 1999}  # forwarded
    assert (await world.payment(no)).state is State.REFUNDED

    again = await _reconciler(world).run(day)
    assert again.clean and again.run.counts["refund_matched"] == 1 and "refund_healed" not in again.run.counts
    assert await world.service.store.refund_events(out_refund_no) == events


async def test_a_succeeded_refund_no_bill_lists_is_refund_missing_after_the_buffer(world: World) -> None:
    no = await _paid(world)
    world.wechat_faults(api_500=1.0)  # WeChat never takes the request ...
    status, error = await _refund(world, no, amount=500)
    assert status == 503, error
    out_refund_no = error["error"]["out_refund_no"]
    world.wechat_faults()
    assert world.wechat_order(no).refunds == []
    # ... yet payflow holds it as succeeded, under a refund id WeChat does not know.
    day = _today(world)
    await world.service.store.transition_refund(
        await _stored(world, out_refund_no), RefundState.SUCCEEDED, RefundTrigger.SUCCEED, source="query",
        at=world.clock.now(), changes={"refund_id": "50300GHOST0001", "succeeded_at": world.clock.now()})

    first = await _reconciler(world).run(day)
    assert first.clean and first.run.counts["refund_missing"] == 0  # a later bill may still list it
    for later_day in range(1, BANK_MISS_AFTER_DAYS):
        world.advance(86400)
        assert (await _reconciler(world).run(day + dt.timedelta(days=later_day))).clean

    world.advance(86400)
    bill_date = day + dt.timedelta(days=BANK_MISS_AFTER_DAYS)
    later = await _reconciler(world).run(bill_date)
    [found] = later.discrepancies
    assert (found.category, found.out_trade_no, found.bill_date) == ("REFUND_MISSING", no, bill_date)
    assert found.detail == {"out_refund_no": out_refund_no, "refund_id": "50300GHOST0001", "amount": 500,
                            "succeeded_day": day.isoformat()}
    assert later.run.counts["refund_missing"] == 1
    assert (await _stored(world, out_refund_no)).billed_on is None

    again = await _reconciler(world).run(bill_date)
    assert again.discrepancies == later.discrepancies


async def test_a_refund_line_that_disagrees_with_its_record_is_a_mismatch(world: World) -> None:
    no = await _paid(world)
    world.wechat_faults(never_deliver=1.0)
    status, refund = await _refund(world, no, amount=700, out_refund_no="odd-1")
    assert status == 201, refund
    stored = await _stored(world, "odd-1")
    await world.service.store.transition_refund(
        stored, RefundState.SUCCEEDED, RefundTrigger.SUCCEED, source="query", at=world.clock.now(),
        changes={"refund_id": "50300OTHER0001", "succeeded_at": world.clock.now()})

    report = await _reconciler(world).run(_today(world))
    [found] = report.discrepancies
    assert (found.category, found.out_trade_no) == ("REFUND_MISMATCH", no)
    assert found.detail["mismatched"] == ["refund_id"]
    assert found.detail["refund_id"] == refund["refund_id"] and found.detail["expected_refund_id"] == "50300OTHER0001"
    assert found.detail["out_refund_no"] == "odd-1" and found.detail["expected_amount"] == 700
    assert report.run.counts["refund_mismatch"] == 1
    assert (await _stored(world, "odd-1")).billed_on is None


async def test_a_rerun_of_a_day_with_every_kind_of_refund_line_records_nothing_twice(world: World) -> None:
    matched = await _paid(world, "order-1")
    assert (await _refund(world, matched, amount=100, out_refund_no="m-1"))[0] == 201
    await world.notify()
    unknown = await _paid(world, "order-2")
    await _refund_outside(world, unknown, 200)
    await world.notify()
    lost = await _paid(world, "order-3")
    world.wechat_faults(never_deliver=1.0)
    assert (await _refund(world, lost, amount=300, out_refund_no="l-1"))[0] == 201
    world.wechat_faults()

    day = _today(world)
    store = world.service.store
    first = await _reconciler(world).run(day)
    await world.service.drain()
    assert [(d.category, d.out_trade_no) for d in first.discrepancies] == [("REFUND_UNKNOWN", unknown)]
    assert first.run.counts["refund_matched"] == 1 and first.run.counts["refund_healed"] == 1
    snapshot = ([await world.events(no) for no in (matched, unknown, lost)],
                [await store.refund_events(no) for no in ("m-1", "l-1")],
                {o: world.backend_order(o).refunds for o in ("order-1", "order-3")})
    assert snapshot[2] == {"order-1": {"m-1": 100}, "order-3": {"l-1": 300}}

    again = await _reconciler(world).run(day)
    await world.service.drain()
    assert again.discrepancies == first.discrepancies
    assert again.run.counts["refund_matched"] == 2 and "refund_healed" not in again.run.counts
    assert snapshot == ([await world.events(no) for no in (matched, unknown, lost)],
                        [await store.refund_events(no) for no in ("m-1", "l-1")],
                        {o: world.backend_order(o).refunds for o in ("order-1", "order-3")})
    assert [r.status for r in await store.reconciliation_runs(day)] == ["discrepancies", "discrepancies"]
