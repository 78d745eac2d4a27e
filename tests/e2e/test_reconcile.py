"""Reconciliation against the simulator's real trade bill: every matching rule, healing, idempotence."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from payflow import errors
from payflow.clock import SHANGHAI
from payflow.reconcile import ReconcileFailed, Reconciler, day_bounds
from payflow.states import Source, State, Trigger
from payflow.wechat.api import Transaction
from payflow.wechat.client import BillInfo
from tests.e2e.conftest import World


def _today(world: World) -> dt.date:
    return world.clock.now().astimezone(SHANGHAI).date()


def _reconciler(world: World) -> Reconciler:
    return Reconciler(world.service, world.service.wechat)  # type: ignore[arg-type]


async def _paid_and_synced(world: World, order_id: str, amount: int = 1999) -> str:
    created = await world.create(order_id, amount)
    await world.pay(created["out_trade_no"])
    await world.notify()
    assert (await world.payment(created["out_trade_no"])).state is State.SYNCED
    return created["out_trade_no"]  # type: ignore[no-any-return]


async def test_synced_becomes_reconciled_and_a_rerun_changes_nothing(world: World) -> None:
    no = await _paid_and_synced(world, "order-1")
    unpaid = (await world.create("order-2"))["out_trade_no"]
    report = await _reconciler(world).run(_today(world))
    assert report.clean and report.run.status == "clean"
    assert report.run.counts["reconciled"] == 1 and report.run.counts["lines"] == 1
    assert (await world.payment(no)).state is State.RECONCILED
    assert (await world.payment(unpaid)).state is State.PREPAID
    events = await world.events(no)
    assert (events[-1].trigger, events[-1].source) == ("reconcile", "bill")

    again = await _reconciler(world).run(_today(world))
    assert again.clean and again.run.counts["already_reconciled"] == 1
    assert await world.events(no) == events  # nothing decided twice
    assert [r.status for r in await world.service.store.reconciliation_runs(_today(world))] == ["clean", "clean"]


async def test_a_payment_whose_notification_and_queries_were_lost_is_healed_by_the_bill(world: World) -> None:
    world.wechat_faults(never_deliver=1.0)
    created = await world.create("order-1")
    await world.pay(created["out_trade_no"])
    await world.notify()  # nothing arrives, and no sweep ever runs
    assert (await world.payment(created["out_trade_no"])).state is State.PREPAID
    report = await _reconciler(world).run(_today(world))
    await world.service.drain()  # the healed payment is forwarded at once
    assert report.run.counts["healed"] == 1 and report.clean
    payment = await world.payment(created["out_trade_no"])
    assert payment.state is State.SYNCED and payment.transaction_id
    assert ("pay", "bill") in [(e.trigger, e.source) for e in await world.events(created["out_trade_no"])]
    assert world.backend_order("order-1").status == "paid"
    # the next run reconciles it
    await _reconciler(world).run(_today(world))
    assert (await world.payment(created["out_trade_no"])).state is State.RECONCILED


async def test_amount_mismatch_is_flagged_and_recorded(world: World) -> None:
    world.wechat_faults(never_deliver=1.0)
    created = await world.create("order-1", amount=1999)
    await world.pay(created["out_trade_no"], amount=1000)
    report = await _reconciler(world).run(_today(world))
    [found] = report.discrepancies
    assert (found.category, found.out_trade_no) == ("AMOUNT_MISMATCH", created["out_trade_no"])
    assert found.detail["direction"] == "short" and found.detail["billed_amount"] == 1000
    assert report.run.status == "discrepancies"
    payment = await world.payment(created["out_trade_no"])
    assert payment.state is State.NEEDS_REVIEW and world.backend_order("order-1") is None


async def test_a_bill_line_payflow_never_placed_is_a_platform_miss(world: World) -> None:
    async with world.http.post(world.wechat.make_url("/sim/v1/transactions"),
                               json={"out_trade_no": "FOREIGN0001", "amount": 300, "paid": True}) as response:
        assert response.status == 201
    report = await _reconciler(world).run(_today(world))
    assert [(d.category, d.out_trade_no) for d in report.discrepancies] == [("PLATFORM_MISS", "FOREIGN0001")]


async def test_paid_after_close_is_flagged_not_paid(world: World) -> None:
    world.wechat_faults(never_deliver=1.0)
    created = await world.create("order-1")
    await world.pay(created["out_trade_no"])
    payment = await world.payment(created["out_trade_no"])
    await world.service.core.apply(payment, Trigger.CLOSE, source=Source.SWEEPER)  # e.g. closed on a stale view
    report = await _reconciler(world).run(_today(world))
    assert [d.category for d in report.discrepancies] == ["PAID_AFTER_CLOSE"]
    payment = await world.payment(created["out_trade_no"])
    assert payment.state is State.NEEDS_REVIEW and world.backend_order("order-1") is None


async def test_a_refund_line_flags_the_payment(world: World) -> None:
    no = await _paid_and_synced(world, "order-1")
    async with world.http.post(world.wechat.make_url(f"/sim/v1/transactions/{no}/refund"), json={}) as response:
        assert response.status == 200, await response.text()
    report = await _reconciler(world).run(_today(world))
    # No refund record of it: a refund payflow never asked for (tests/e2e/test_reconcile_refunds.py has the rest).
    assert [d.category for d in report.discrepancies] == ["REFUND_UNKNOWN"]
    payment = await world.payment(no)
    assert payment.state is State.NEEDS_REVIEW
    assert (await world.events(no))[-1].detail["reason"] == "refund_seen"
    # already recorded and parked: a re-run adds nothing
    again = await _reconciler(world).run(_today(world))
    assert len(again.discrepancies) == 1 and again.run.counts.get("refund_unknown") == 1


async def test_notified_is_left_to_the_forward_path(world: World) -> None:
    world.backend_faults(error_rate=1.0)
    created = await world.create("order-1")
    await world.pay(created["out_trade_no"])
    await world.notify()
    report = await _reconciler(world).run(_today(world))
    assert report.run.counts["pending_forward"] == 1 and report.clean
    assert (await world.payment(created["out_trade_no"])).state is State.NOTIFIED


async def test_paid_locally_but_in_no_bill_is_held_then_a_bank_miss(world: World) -> None:
    created = await world.create("order-1")
    payment = await world.payment(created["out_trade_no"])
    # WeChat's records never show this payment (the simulator's ledger does not have it as paid).
    txn = Transaction(out_trade_no=payment.out_trade_no, trade_state="SUCCESS", transaction_id="4200GHOST",
                      amount=payment.amount, success_time=world.clock.now(), mchid=world.keys.mchid,
                      appid=world.keys.appid)
    await world.service.confirm_paid(txn, Source.QUERY)
    await world.service.drain()
    day = _today(world)
    first = await _reconciler(world).run(day)
    assert first.clean and first.run.counts["held_for_next_bills"] == 1
    world.advance(3 * 86400)
    later = await _reconciler(world).run(day + dt.timedelta(days=3))
    assert [(d.category, d.out_trade_no) for d in later.discrepancies] == [("BANK_MISS", payment.out_trade_no)]


async def test_a_bill_that_fails_its_hash_is_refused_and_recorded(world: World) -> None:
    client = world.service.wechat

    class Tampered:
        async def trade_bill(self, bill_date: dt.date, *, gzip: bool = False) -> BillInfo:
            info = await client.trade_bill(bill_date, gzip=gzip)  # type: ignore[union-attr]
            return dataclasses.replace(info, hash_value="0" * 40)

        async def download_bill(self, info: BillInfo) -> bytes:
            return await client.download_bill(info)  # type: ignore[union-attr,no-any-return]

    await _paid_and_synced(world, "order-1")
    with pytest.raises(ReconcileFailed, match="SHA1"):
        await Reconciler(world.service, Tampered()).run(_today(world))
    [run] = await world.service.store.reconciliation_runs(_today(world))
    assert run.status == "failed" and "SHA1" in (run.error or "")


async def test_admin_endpoint_lists_discrepancies(world: World) -> None:
    async with world.http.post(world.wechat.make_url("/sim/v1/transactions"),
                               json={"out_trade_no": "FOREIGN0002", "amount": 300, "paid": True}) as response:
        assert response.status == 201
    await _reconciler(world).run(_today(world))
    status, body = await world.api("GET", f"/v1/admin/discrepancies?date={_today(world).isoformat()}")
    assert status == 200 and [d["category"] for d in body["discrepancies"]] == ["PLATFORM_MISS"]
    assert body["runs"][0]["status"] == "discrepancies"
    status, body = await world.api("GET", "/v1/admin/discrepancies?date=yesterday")
    assert status == 422 and body["error"]["field"] == "date"


def test_day_bounds_are_shanghai_days() -> None:
    start, end = day_bounds(dt.date(2026, 11, 26))
    assert start.isoformat() == "2026-11-26T00:00:00+08:00" and (end - start) == dt.timedelta(days=1)


async def test_a_run_stopped_by_the_store_is_recorded_failed_and_a_rerun_finishes_it(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await _paid_and_synced(world, "order-1")
    second = await _paid_and_synced(world, "order-2")
    store = world.service.store
    transition = store.transition
    calls = 0

    async def failing_once(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise errors.StoreUnavailable("disk I/O error")
        return await transition(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "transition", failing_once)
    with pytest.raises(errors.StoreUnavailable):
        await _reconciler(world).run(_today(world))
    [run] = await store.reconciliation_runs(_today(world))
    assert run.status == "failed" and "disk I/O error" in (run.error or "")

    # Not refused as "already running": the re-run reconciles whatever the failed one did not.
    report = await _reconciler(world).run(_today(world))
    assert report.run.status == "clean"
    assert {(await world.payment(no)).state for no in (first, second)} == {State.RECONCILED}
    assert [r.status for r in await store.reconciliation_runs(_today(world))] == ["failed", "clean"]
