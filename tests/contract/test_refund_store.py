"""The refund verbs of the PaymentStore contract; every backend must pass this file unchanged."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import pytest

from payflow import errors, models
from payflow.states import Source, State, Trigger
from payflow.states.refunds import RefundState, RefundTrigger
from payflow.store import Note, PaymentStore
from tests import factories
from tests.factories import T0

pytestmark = pytest.mark.contract


async def _synced(store: PaymentStore, amount: int = 100) -> models.Payment:
    payment = await store.create(factories.payment(amount=amount), source=Source.API, detail={})
    paid = await store.transition(payment, State.NOTIFIED, Trigger.PAY, source=Source.NOTIFY, at=T0,
                                  changes={"transaction_id": "4200", "paid_amount": amount, "paid_at": T0})
    return await store.transition(paid, State.SYNCED, Trigger.SYNC, source=Source.BACKEND, at=T0)


async def test_create_refund_then_read_back(store: PaymentStore) -> None:
    payment = await _synced(store)
    refund = factories.refund(payment, amount=40, reason="damaged", cause="customer asked")
    stored, created = await store.create_refund(refund, refundable=100, source=Source.API, detail={"by": "test"})
    assert created and stored == refund
    assert await store.get_refund(refund.out_refund_no) == refund
    assert await store.get_refund("nope") is None
    assert await store.refunds_of(payment.out_trade_no) == [refund]
    [event] = await store.refund_events(refund.out_refund_no)
    assert (event.from_state, event.to_state, event.trigger, event.source) == (None, RefundState.CREATED, "create",
                                                                                 "api")
    assert event.detail == {"by": "test"} and event.at == T0
    assert await store.count_refunds_by_state() == {RefundState.CREATED: 1}


async def test_the_same_out_refund_no_returns_the_stored_refund(store: PaymentStore) -> None:
    payment = await _synced(store)
    refund = factories.refund(payment, amount=40)
    await store.create_refund(refund, refundable=100, source=Source.API, detail={})
    again, created = await store.create_refund(dataclasses.replace(refund, amount=99, event_id="other"),
                                               refundable=100, source=Source.API, detail={})
    assert not created and again == refund
    assert len(await store.refund_events(refund.out_refund_no)) == 1


async def test_refunds_cannot_sum_past_the_refundable_amount(store: PaymentStore) -> None:
    payment = await _synced(store)
    first, _ = await store.create_refund(factories.refund(payment, amount=60), refundable=100, source=Source.API,
                                         detail={})
    with pytest.raises(errors.RefundExceedsPayment) as raised:
        await store.create_refund(factories.refund(payment, amount=41), refundable=100, source=Source.API, detail={})
    assert raised.value.refundable == 40
    # A refund that ended without money moving no longer counts.
    await store.transition_refund(first, RefundState.FAILED, RefundTrigger.FAIL, source=Source.API, at=T0,
                                  changes={"failure": "INVALID_REQUEST"})
    _, created = await store.create_refund(factories.refund(payment, amount=100), refundable=100,
                                           source=Source.API, detail={})
    assert created


async def test_concurrent_refunds_never_sum_past_the_amount(store: PaymentStore) -> None:
    payment = await _synced(store)
    attempts = [store.create_refund(factories.refund(payment, amount=30), refundable=100, source=Source.API,
                                    detail={}) for _ in range(6)]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    assert sum(1 for r in results if isinstance(r, tuple)) == 3
    assert all(isinstance(r, errors.RefundExceedsPayment) for r in results if not isinstance(r, tuple))
    assert sum(r.amount for r in await store.refunds_of(payment.out_trade_no)) == 90


async def test_a_refund_of_no_payment_is_not_found(store: PaymentStore) -> None:
    ghost = factories.payment()
    with pytest.raises(errors.NotFound):
        await store.create_refund(factories.refund(ghost), refundable=100, source=Source.API, detail={})


async def test_transition_is_a_compare_and_set_with_an_event(store: PaymentStore) -> None:
    payment = await _synced(store)
    refund, _ = await store.create_refund(factories.refund(payment), refundable=100, source=Source.API, detail={})
    later = T0 + dt.timedelta(minutes=1)
    accepted = await store.transition_refund(
        refund, RefundState.PROCESSING, RefundTrigger.ACCEPT, source=Source.API, at=later,
        detail={"refund_id": "5030"}, changes={"refund_id": "5030", "next_attempt_at": later})
    assert (accepted.state, accepted.version, accepted.refund_id, accepted.next_attempt_at, accepted.updated_at) == (
        RefundState.PROCESSING, 2, "5030", later, later)
    with pytest.raises(errors.StaleState):
        await store.transition_refund(refund, RefundState.PROCESSING, RefundTrigger.ACCEPT, source=Source.API, at=later)
    with pytest.raises(errors.IllegalTransition):
        await store.transition_refund(accepted, RefundState.SYNCED, RefundTrigger.SYNC, source=Source.API, at=later)
    with pytest.raises(ValueError):
        await store.transition_refund(accepted, RefundState.SUCCEEDED, RefundTrigger.SUCCEED, source=Source.API,
                                      at=later, changes={"amount": 1})
    note = models.Notification("n-1", later, "REFUND.SUCCESS", payment.out_trade_no, "refund_succeeded",
                               {"out_refund_no": refund.out_refund_no})
    done = await store.transition_refund(
        accepted, RefundState.SUCCEEDED, RefundTrigger.SUCCEED, source=Source.NOTIFY, at=later,
        changes={"succeeded_at": later}, notification=note)
    assert done.succeeded_at == later and done.state is RefundState.SUCCEEDED
    assert (await store.get_notification("n-1")) is not None
    events = await store.refund_events(refund.out_refund_no)
    assert [(e.from_state, e.to_state, e.trigger) for e in events] == [
        (None, RefundState.CREATED, "create"), (RefundState.CREATED, RefundState.PROCESSING, "accept"),
        (RefundState.PROCESSING, RefundState.SUCCEEDED, "succeed")]
    assert events[1].detail == {"refund_id": "5030"}


async def test_claim_due_refunds_leases_and_reschedule_ends_the_lease(store: PaymentStore) -> None:
    payment = await _synced(store)
    due, _ = await store.create_refund(factories.refund(payment, amount=10, next_attempt_at=T0), refundable=100,
                                       source=Source.API, detail={})
    await store.create_refund(factories.refund(payment, amount=10, next_attempt_at=T0 + dt.timedelta(hours=1)),
                              refundable=100, source=Source.API, detail={})
    await store.create_refund(factories.refund(payment, amount=10, next_attempt_at=None), refundable=100,
                              source=Source.API, detail={})
    [claimed] = await store.claim_due_refunds(T0, 10, 30)
    assert claimed.out_refund_no == due.out_refund_no and claimed.lease_token
    assert claimed.next_attempt_at == T0 + dt.timedelta(seconds=30)
    assert await store.claim_due_refunds(T0 + dt.timedelta(seconds=10), 10, 30) == []
    with pytest.raises(errors.StaleState):  # the lease is no longer the one read
        await store.reschedule_refund(due, next_attempt_at=None, attempts=0, at=T0)
    moved = await store.reschedule_refund(claimed, next_attempt_at=T0 + dt.timedelta(minutes=5), attempts=1, at=T0,
                                          note=Note("submit_failed", Source.SWEEPER, {"error": "timeout"}))
    assert (moved.lease_token, moved.attempts, moved.next_attempt_at) == (None, 1, T0 + dt.timedelta(minutes=5))
    assert (await store.refund_events(due.out_refund_no))[-1].trigger == "submit_failed"
    assert await store.claim_due_refunds(T0, 0, 30) == []


async def test_success_times_and_billing(store: PaymentStore) -> None:
    payment = await _synced(store)
    refund, _ = await store.create_refund(factories.refund(payment, amount=50), refundable=100, source=Source.API,
                                          detail={})
    done = await store.transition_refund(refund, RefundState.SUCCEEDED, RefundTrigger.SUCCEED, source=Source.QUERY,
                                         at=T0, changes={"refund_id": "5031", "succeeded_at": T0})
    assert await store.refunds_succeeded_between(T0, T0 + dt.timedelta(seconds=1)) == [done]
    assert await store.refunds_succeeded_between(T0 + dt.timedelta(seconds=1), T0 + dt.timedelta(days=1)) == []
    await store.mark_refund_billed(refund.out_refund_no, dt.date(2026, 11, 26))
    await store.mark_refund_billed(refund.out_refund_no, dt.date(2026, 11, 27))  # the first bill stays
    assert (await store.get_refund(refund.out_refund_no)).billed_on == dt.date(2026, 11, 26)  # type: ignore[union-attr]


async def test_a_payment_can_be_refunded(store: PaymentStore) -> None:
    payment = await _synced(store)
    refunded = await store.transition(payment, State.REFUNDED, Trigger.REFUND, source=Source.SWEEPER, at=T0,
                                      detail={"refunded": 100})
    assert refunded.state is State.REFUNDED and refunded.next_attempt_at is None
    assert (await store.count_by_state())[State.REFUNDED] == 1
    assert (await store.events(payment.out_trade_no))[-1].to_state is State.REFUNDED


async def test_a_closed_payment_keeps_its_schedule_for_the_closed_event(store: PaymentStore) -> None:
    payment = await store.create(factories.payment(), source=Source.API, detail={})
    closed = await store.transition(payment, State.CLOSED, Trigger.CLOSE, source=Source.SWEEPER, at=T0,
                                    changes={"next_attempt_at": T0})
    assert closed.next_attempt_at == T0
    [claimed] = await store.claim_due(T0, 10, 30)
    told = await store.reschedule(claimed, next_attempt_at=None, attempts=0, at=T0,
                                  note=Note("closed_forwarded", Source.BACKEND, {"status": 200}))
    assert told.next_attempt_at is None and told.state is State.CLOSED
