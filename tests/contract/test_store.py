"""The PaymentStore contract. Every backend must pass this file unchanged."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable

import pytest

from payflow import errors, models
from payflow.states import Source, State, Trigger
from payflow.store import PaymentStore, Step
from tests import factories
from tests.factories import T0

pytestmark = pytest.mark.contract


async def _prepaid(store: PaymentStore, **overrides: object) -> models.Payment:
    created = await store.create(factories.payment(**overrides), source=Source.API, detail={})
    return await store.transition(
        created, State.PREPAID, Trigger.PREPAY, source=Source.API, at=T0,
        detail={"prepay_id": "wx1"}, changes={"prepay_id": "wx1", "next_attempt_at": T0 + dt.timedelta(seconds=30)},
    )


async def test_create_then_read_back(store: PaymentStore) -> None:
    payment = factories.payment(attach="cart=7")
    await store.create(payment, source=Source.API, detail={"note": "hello"})
    assert await store.get(payment.out_trade_no) == payment
    assert await store.get_by_order_id(payment.order_id) == payment
    assert await store.get("nope-000") is None
    assert await store.get_by_order_id("nope") is None
    [event] = await store.events(payment.out_trade_no)
    assert (event.from_state, event.to_state, event.trigger, event.source) == (None, State.CREATED, "create", "api")
    assert event.detail == {"note": "hello"} and event.at == T0
    assert (await store.get(payment.out_trade_no)).expires_at.tzinfo is not None  # type: ignore[union-attr]


async def test_duplicates_are_refused(store: PaymentStore) -> None:
    first = factories.payment()
    await store.create(first, source=Source.API, detail={})
    with pytest.raises(errors.DuplicatePayment):
        await store.create(factories.payment(order_id=first.order_id), source=Source.API, detail={})
    with pytest.raises(errors.DuplicatePayment):
        await store.create(factories.payment(out_trade_no=first.out_trade_no), source=Source.API, detail={})
    assert len(await store.events(first.out_trade_no)) == 1


async def test_claim_leases_one_payment_unless_another_lease_holds(store: PaymentStore) -> None:
    payment = await _prepaid(store)
    leased = await store.claim(payment, now=T0, lease=60)
    assert leased.lease_token and leased.next_attempt_at == T0 + dt.timedelta(seconds=60)
    assert await store.claim_due(T0 + dt.timedelta(seconds=59), 10, 60) == []  # the lease holds it
    with pytest.raises(errors.StaleState):  # nor can another worker claim it while the lease runs
        await store.claim(payment, now=T0 + dt.timedelta(seconds=59), lease=60)
    again = await store.claim(leased, now=T0 + dt.timedelta(seconds=60), lease=60)  # it ran out
    assert again.lease_token != leased.lease_token
    moved = await store.reschedule(again, next_attempt_at=T0 + dt.timedelta(hours=1), attempts=1,
                                   at=T0 + dt.timedelta(seconds=61))
    with pytest.raises(errors.StaleState):  # a stale read is refused
        await store.claim(again, now=T0 + dt.timedelta(seconds=62), lease=60)
    assert (await store.claim(moved, now=T0 + dt.timedelta(seconds=62), lease=60)).lease_token


async def test_only_a_released_order_id_can_be_taken_again(store: PaymentStore) -> None:
    kept = await store.create(factories.payment(), source=Source.API, detail={})
    await store.transition(kept, State.CLOSED, Trigger.CLOSE, source=Source.API, at=T0, detail={})
    with pytest.raises(errors.DuplicatePayment):  # a closed payment still holds its order
        await store.create(factories.payment(order_id=kept.order_id), source=Source.API, detail={})

    refused = await store.create(factories.payment(), source=Source.API, detail={})
    await store.transition(refused, State.CLOSED, Trigger.CLOSE, source=Source.API, at=T0,
                           detail={"reason": "placement_rejected"}, changes={"order_released": True})
    assert await store.get_by_order_id(refused.order_id) is None
    assert (await store.get(refused.out_trade_no)).state is State.CLOSED  # type: ignore[union-attr]  # still kept
    retry = await store.create(factories.payment(order_id=refused.order_id, created_at=T0 + dt.timedelta(seconds=1)),
                               source=Source.API, detail={})
    assert await store.get_by_order_id(refused.order_id) == retry
    with pytest.raises(errors.DuplicatePayment):  # one live payment per order
        await store.create(factories.payment(order_id=refused.order_id), source=Source.API, detail={})
    assert await store.get_by_order_id(kept.order_id) is not None


async def test_transition_writes_state_version_changes_and_event(store: PaymentStore) -> None:
    payment = await _prepaid(store)
    assert payment.state is State.PREPAID and payment.version == 2 and payment.prepay_id == "wx1"
    paid_at = T0 + dt.timedelta(minutes=1)
    paid = await store.transition(
        payment, State.NOTIFIED, Trigger.PAY, source=Source.NOTIFY, at=paid_at,
        detail={"amount": 100}, changes={"transaction_id": "4200", "paid_at": paid_at, "paid_amount": 100,
                                         "next_attempt_at": paid_at},
    )
    assert (paid.state, paid.version, paid.transaction_id, paid.paid_at) == (State.NOTIFIED, 3, "4200", paid_at)
    assert await store.get(payment.out_trade_no) == paid
    events = await store.events(payment.out_trade_no)
    assert [(e.from_state, e.to_state, e.trigger, e.source) for e in events] == [
        (None, State.CREATED, "create", "api"),
        (State.CREATED, State.PREPAID, "prepay", "api"),
        (State.PREPAID, State.NOTIFIED, "pay", "notify"),
    ]
    assert events[-1].detail == {"amount": 100} and events[-1].at == paid_at


async def test_transition_outside_the_table_writes_nothing(store: PaymentStore) -> None:
    payment = await _prepaid(store)
    with pytest.raises(errors.IllegalTransition):
        await store.transition(payment, State.SYNCED, Trigger.SYNC, source=Source.API, at=T0)
    with pytest.raises(errors.IllegalTransition):  # a real trigger, but not to that state
        await store.transition(payment, State.CLOSED, Trigger.PAY, source=Source.API, at=T0)
    assert await store.get(payment.out_trade_no) == payment
    assert len(await store.events(payment.out_trade_no)) == 2


async def test_stale_version_loses_and_writes_nothing(store: PaymentStore) -> None:
    created = await store.create(factories.payment(), source=Source.API, detail={})
    await store.transition(created, State.PREPAID, Trigger.PREPAY, source=Source.API, at=T0,
                           changes={"prepay_id": "wx1"})
    with pytest.raises(errors.StaleState):
        await store.transition(created, State.CLOSED, Trigger.CLOSE, source=Source.SWEEPER, at=T0)
    current = await store.get(created.out_trade_no)
    assert current is not None and current.state is State.PREPAID
    assert [e.trigger for e in await store.events(created.out_trade_no)] == ["create", "prepay"]


@pytest.mark.parametrize("separate_connections", [False, True])
async def test_concurrent_transitions_exactly_one_wins(
    open_url: Callable[[], Awaitable[PaymentStore]], separate_connections: bool
) -> None:
    first = await open_url()
    second = await open_url() if separate_connections else first
    payment = await _prepaid(first)
    results = await asyncio.gather(
        first.transition(payment, State.NOTIFIED, Trigger.PAY, source=Source.NOTIFY, at=T0,
                         changes={"transaction_id": "4200"}),
        second.transition(payment, State.CLOSED, Trigger.CLOSE, source=Source.SWEEPER, at=T0),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, models.Payment)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1 and len(losers) == 1
    assert isinstance(losers[0], errors.StaleState)
    stored = await first.get(payment.out_trade_no)
    assert stored == winners[0]
    events = await first.events(payment.out_trade_no)
    assert len(events) == 3 and events[-1].to_state is winners[0].state


async def test_many_concurrent_writers_one_winner(store: PaymentStore) -> None:
    payment = await _prepaid(store)
    results = await asyncio.gather(
        *(store.transition(payment, State.NOTIFIED, Trigger.PAY, source=Source.NOTIFY, at=T0,
                           changes={"transaction_id": f"42{i}"}) for i in range(20)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, models.Payment) for r in results) == 1
    assert sum(isinstance(r, errors.StaleState) for r in results) == 19
    assert [e.trigger for e in await store.events(payment.out_trade_no)] == ["create", "prepay", "pay"]


async def test_unscheduled_states_drop_their_schedule(store: PaymentStore) -> None:
    payment = await _prepaid(store)
    flagged = await store.transition(payment, State.NEEDS_REVIEW, Trigger.FLAG, source=Source.SWEEPER, at=T0,
                                     changes={"next_attempt_at": T0})
    assert flagged.next_attempt_at is None
    assert await store.claim_due(T0 + dt.timedelta(days=1), 10, 30) == []


async def test_claim_due_returns_only_what_is_due_oldest_first(store: PaymentStore) -> None:
    late = await _prepaid(store, next_attempt_at=None)
    late = await store.reschedule(late, next_attempt_at=T0 + dt.timedelta(seconds=20), attempts=1, at=T0)
    early = await _prepaid(store)
    early = await store.reschedule(early, next_attempt_at=T0 + dt.timedelta(seconds=5), attempts=1, at=T0)
    future = await _prepaid(store)
    await store.reschedule(future, next_attempt_at=T0 + dt.timedelta(hours=1), attempts=0, at=T0)

    assert await store.claim_due(T0, 10, 30) == []
    claimed = await store.claim_due(T0 + dt.timedelta(seconds=30), 10, 60)
    assert [p.out_trade_no for p in claimed] == [early.out_trade_no, late.out_trade_no]
    assert all(p.lease_token for p in claimed)
    assert len({p.lease_token for p in claimed}) == 2


async def test_claim_due_respects_limit(store: PaymentStore) -> None:
    for _ in range(5):
        await store.create(factories.payment(), source=Source.API, detail={})
    now = T0 + dt.timedelta(minutes=1)
    first = await store.claim_due(now, 3, 30)
    second = await store.claim_due(now, 3, 30)
    assert len(first) == 3 and len(second) == 2
    assert not {p.out_trade_no for p in first} & {p.out_trade_no for p in second}
    assert await store.claim_due(now, 3, 30) == []
    assert await store.claim_due(now, 0, 30) == []


async def test_concurrent_claims_never_share_a_payment(open_url: Callable[[], Awaitable[PaymentStore]]) -> None:
    one, two = await open_url(), await open_url()
    for _ in range(30):
        await one.create(factories.payment(), source=Source.API, detail={})
    now = T0 + dt.timedelta(minutes=1)
    batches = await asyncio.gather(*(s.claim_due(now, 4, 30) for s in (one, two) * 6))
    ids = [p.out_trade_no for batch in batches for p in batch]
    assert len(ids) == len(set(ids)) == 30


async def test_expired_lease_is_claimable_again_and_the_old_holder_loses(store: PaymentStore) -> None:
    await store.create(factories.payment(), source=Source.API, detail={})
    now = T0 + dt.timedelta(minutes=1)
    [held] = await store.claim_due(now, 10, 30)
    assert await store.claim_due(now + dt.timedelta(seconds=29), 10, 30) == []
    [again] = await store.claim_due(now + dt.timedelta(seconds=31), 10, 30)
    assert again.out_trade_no == held.out_trade_no and again.lease_token != held.lease_token
    # The first worker, back from a long pause, cannot overwrite the new holder's schedule.
    with pytest.raises(errors.StaleState):
        await store.reschedule(held, next_attempt_at=now, attempts=1, at=now)
    done = await store.reschedule(again, next_attempt_at=now + dt.timedelta(minutes=5), attempts=1, at=now)
    assert done.attempts == 1 and done.lease_token is None
    assert done.next_attempt_at == now + dt.timedelta(minutes=5)


async def test_transition_ends_a_lease(store: PaymentStore) -> None:
    payment = await _prepaid(store)
    [claimed] = await store.claim_due(T0 + dt.timedelta(minutes=1), 1, 30)
    moved = await store.transition(claimed, State.NOTIFIED, Trigger.PAY, source=Source.QUERY, at=T0,
                                   changes={"transaction_id": "42", "next_attempt_at": T0})
    assert moved.lease_token is None and moved.attempts == 0
    assert [p.out_trade_no for p in await store.claim_due(T0, 1, 30)] == [payment.out_trade_no]


async def test_a_transition_can_hand_its_writer_a_lease(store: PaymentStore) -> None:
    payment = await _prepaid(store)
    lease_until = T0 + dt.timedelta(seconds=30)
    paid = await store.transition(payment, State.NOTIFIED, Trigger.PAY, source=Source.NOTIFY, at=T0,
                                  changes={"transaction_id": "42", "next_attempt_at": lease_until},
                                  lease_token="mine")
    assert paid.lease_token == "mine"
    assert await store.claim_due(T0 + dt.timedelta(seconds=29), 10, 30) == []  # nobody else takes it
    # the holder finishes with a reschedule under its lease
    done = await store.reschedule(paid, next_attempt_at=T0 + dt.timedelta(minutes=1), attempts=1, at=T0)
    assert done.lease_token is None and done.attempts == 1
    # had it died instead, the payment would have been due again once the lease ran out
    [again] = await store.claim_due(T0 + dt.timedelta(minutes=1), 10, 30)
    assert again.out_trade_no == payment.out_trade_no


async def test_listing_pages_by_cursor_and_counts_by_state(store: PaymentStore) -> None:
    for i in range(5):
        await store.create(factories.payment(out_trade_no=f"LIST{i:06d}"), source=Source.API, detail={})
    await _prepaid(store, out_trade_no="LIST999999")
    first = await store.list_payments(limit=2)
    assert [p.out_trade_no for p in first] == ["LIST000000", "LIST000001"]
    rest = await store.list_payments(after=first[-1].out_trade_no, limit=10)
    assert [p.out_trade_no for p in rest] == ["LIST000002", "LIST000003", "LIST000004", "LIST999999"]
    assert [p.out_trade_no for p in await store.list_payments(state=State.PREPAID)] == ["LIST999999"]
    assert await store.count_by_state() == {State.CREATED: 5, State.PREPAID: 1}


async def test_one_reconciliation_run_per_date_at_a_time(open_url: Callable[[], Awaitable[PaymentStore]]) -> None:
    one, two = await open_url(), await open_url()
    day = dt.date(2026, 11, 25)
    started = await asyncio.gather(*(s.start_reconciliation(day, T0) for s in (one, two, one, two)))
    assert sum(run is not None for run in started) == 1  # replicas racing: exactly one runs the day
    [run_id] = [run for run in started if run is not None]
    await one.finish_reconciliation(run_id, status="clean", counts={"lines": 3}, at=T0)
    again = await two.start_reconciliation(day, T0 + dt.timedelta(minutes=1))  # finished: a re-run may start
    assert again is not None and again != run_id
    # a run left `running` by a dead process stops blocking after an hour
    assert await one.start_reconciliation(day, T0 + dt.timedelta(minutes=30)) is None
    assert await one.start_reconciliation(day, T0 + dt.timedelta(hours=2)) is not None
    assert [r.status for r in await one.reconciliation_runs(day)] == ["clean", "running", "running"]


async def test_notifications_are_deduplicated(store: PaymentStore) -> None:
    note = models.Notification(notification_id="EV-1", received_at=T0, event_type="TRANSACTION.SUCCESS",
                               out_trade_no=None, outcome="unknown_payment", resource={"out_trade_no": "x"})
    assert await store.record_notification(note) is True
    assert await store.record_notification(dataclasses.replace(note, outcome="again")) is False
    assert await store.get_notification("EV-1") == note
    assert await store.get_notification("EV-2") is None


async def test_a_payments_notifications_and_its_transaction_id_are_found(store: PaymentStore) -> None:
    payment = await _prepaid(store)
    later = models.Notification(notification_id="EV-B", received_at=T0 + dt.timedelta(seconds=5),
                                event_type="REFUND.SUCCESS", out_trade_no=payment.out_trade_no, outcome="refund_seen",
                                resource={"refund_status": "SUCCESS"})
    first = dataclasses.replace(later, notification_id="EV-A", received_at=T0, event_type="TRANSACTION.SUCCESS",
                                outcome="accepted", resource={"trade_state": "SUCCESS"})
    other = dataclasses.replace(first, notification_id="EV-C", out_trade_no="T-OTHER")
    for note in (later, first, other):
        await store.record_notification(note)
    assert [n.notification_id for n in await store.notifications(payment.out_trade_no)] == ["EV-A", "EV-B"]
    assert await store.notifications("T-NONE") == []
    assert await store.get_by_transaction_id("4200000001") is None
    paid = await store.transition(payment, State.NOTIFIED, Trigger.PAY, source=Source.NOTIFY, at=T0,
                                  changes={"transaction_id": "4200000001"})
    assert await store.get_by_transaction_id("4200000001") == paid


async def test_notification_commits_with_its_transition_or_not_at_all(store: PaymentStore) -> None:
    payment = await _prepaid(store)
    note = models.Notification(notification_id="EV-9", received_at=T0, event_type="TRANSACTION.SUCCESS",
                               out_trade_no=payment.out_trade_no, outcome="accepted",
                               resource={"trade_state": "SUCCESS"})
    stale = dataclasses.replace(payment, version=payment.version - 1)
    with pytest.raises(errors.StaleState):
        await store.transition(stale, State.NOTIFIED, Trigger.PAY, source=Source.NOTIFY, at=T0,
                               changes={"transaction_id": "1"}, notification=note)
    assert await store.get_notification("EV-9") is None
    await store.transition(payment, State.NOTIFIED, Trigger.PAY, source=Source.NOTIFY, at=T0,
                           changes={"transaction_id": "1"}, notification=note)
    assert await store.get_notification("EV-9") == note


async def test_reopening_runs_migrations_harmlessly(open_url: Callable[[], Awaitable[PaymentStore]]) -> None:
    first = await open_url()
    payment = await _prepaid(first)
    again, third = await asyncio.gather(open_url(), open_url())  # two "replicas" migrating at once
    for store in (again, third):
        assert await store.get(payment.out_trade_no) == payment
        assert len(await store.events(payment.out_trade_no)) == 2
    await again.create(factories.payment(), source=Source.API, detail={})


_CHILD = textwrap.dedent(
    """
    import asyncio, datetime as dt, sys, time
    from payflow.states import Source, State, Trigger
    from payflow.store import open_store
    from tests import factories

    async def main():
        store = await open_store(sys.argv[1])
        payment = await store.create(factories.payment(out_trade_no="CHILD00001", order_id="child-1"),
                                     source=Source.API, detail={})
        await store.transition(payment, State.PREPAID, Trigger.PREPAY, source=Source.API,
                               at=factories.T0, changes={"prepay_id": "wx-child"})
        print("committed", flush=True)
        time.sleep(600)  # never closes the store: the parent kills us here

    asyncio.run(main())
    """
)


async def test_committed_write_survives_sigkill(
    store_url: str, open_url: Callable[[], Awaitable[PaymentStore]]
) -> None:
    child = subprocess.Popen(  # noqa: ASYNC220 (killed below; the loop has nothing else to do)
        [sys.executable, "-c", _CHILD, store_url], stdout=subprocess.PIPE, cwd=os.getcwd(),
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 30)  # type: ignore[union-attr]
        assert line.strip() == b"committed"
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert child.returncode == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()  # type: ignore[union-attr]
    store = await open_url()
    payment = await store.get("CHILD00001")
    assert payment is not None and payment.state is State.PREPAID and payment.prepay_id == "wx-child"
    assert [e.trigger for e in await store.events("CHILD00001")] == ["create", "prepay"]


def _pay(payment: models.Payment | None) -> Step:
    """A decision like the service's: pay a prepaid payment, leave any other alone."""
    if payment is None:
        return Step("unknown_payment")
    if payment.state is State.PREPAID:
        return Step("accepted", Trigger.PAY, State.NOTIFIED, "notify", {"transaction_id": "42"},
                    {"transaction_id": "42", "paid_amount": payment.amount}, lease_token="lease-1")
    return Step("already_paid")


def _note(notification_id: str, out_trade_no: str | None) -> models.Notification:
    return models.Notification(notification_id=notification_id, received_at=T0, event_type="TRANSACTION.SUCCESS",
                               out_trade_no=out_trade_no, outcome="", resource={"trade_state": "SUCCESS"})


async def test_decide_writes_the_step_with_its_event_and_notification(store: PaymentStore) -> None:
    payment = await _prepaid(store)
    decided = await store.decide(payment.out_trade_no, _pay, at=T0, notification=_note("EV-D", payment.out_trade_no))
    assert decided.step is not None and decided.step.outcome == "accepted"
    assert decided.before == payment
    assert decided.after == await store.get(payment.out_trade_no)
    assert decided.after is not None and decided.after.state is State.NOTIFIED
    assert (decided.after.transaction_id, decided.after.lease_token) == ("42", "lease-1")
    last = (await store.events(payment.out_trade_no))[-1]
    assert (last.from_state, last.to_state, last.trigger, last.source) == (State.PREPAID, State.NOTIFIED, "pay",
                                                                          "notify")
    assert (await store.get_notification("EV-D")).outcome == "accepted"  # type: ignore[union-attr]

    # The same notification again: nothing decided, nothing written.
    again = await store.decide(payment.out_trade_no, _pay, at=T0, notification=_note("EV-D", payment.out_trade_no))
    assert again.step is None
    assert len(await store.events(payment.out_trade_no)) == 3
    # Another notification of the same payment: decided from the payment as it is now.
    late = await store.decide(payment.out_trade_no, _pay, at=T0, notification=_note("EV-E", payment.out_trade_no))
    assert late.step is not None and late.step.outcome == "already_paid" and late.after == decided.after
    assert (await store.get_notification("EV-E")).outcome == "already_paid"  # type: ignore[union-attr]


async def test_decide_on_an_unknown_payment_records_the_notification(store: PaymentStore) -> None:
    decided = await store.decide("PF-nobody", _pay, at=T0, notification=_note("EV-U", "PF-nobody"))
    assert decided.step is not None and decided.step.outcome == "unknown_payment"
    assert decided.before is None and decided.after is None
    assert (await store.get_notification("EV-U")).outcome == "unknown_payment"  # type: ignore[union-attr]


async def test_a_refused_decision_writes_nothing(store: PaymentStore) -> None:
    payment = await _prepaid(store)

    def refuse(_: models.Payment | None) -> Step:
        raise errors.GuardRejected("prepaid", "pay", "no transaction_id")

    with pytest.raises(errors.GuardRejected):
        await store.decide(payment.out_trade_no, refuse, at=T0, notification=_note("EV-R", payment.out_trade_no))
    assert await store.get(payment.out_trade_no) == payment
    assert await store.get_notification("EV-R") is None


async def test_concurrent_decisions_pay_once(store: PaymentStore) -> None:
    payment = await _prepaid(store)
    results = await asyncio.gather(*(
        store.decide(payment.out_trade_no, _pay, at=T0, notification=_note(f"EV-{i}", payment.out_trade_no))
        for i in range(8)))
    outcomes = sorted(r.step.outcome for r in results if r.step is not None)
    assert outcomes == ["accepted"] + ["already_paid"] * 7
    assert [e.trigger for e in await store.events(payment.out_trade_no)].count("pay") == 1
    # Eight deliveries of one notification: it is recorded, and acts, once.
    other = await _prepaid(store)
    same = await asyncio.gather(*(
        store.decide(other.out_trade_no, _pay, at=T0, notification=_note("EV-same", other.out_trade_no))
        for _ in range(8)))
    assert sorted(r.step.outcome if r.step else "duplicate" for r in same) == ["accepted"] + ["duplicate"] * 7


async def test_a_transition_returns_the_payment_exactly_as_stored(store: PaymentStore) -> None:
    payment = await _prepaid(store)
    shanghai = dt.timezone(dt.timedelta(hours=8))
    paid_at = dt.datetime(2026, 11, 26, 20, 1, 2, 123456, tzinfo=shanghai)
    moved = await store.transition(payment, State.NOTIFIED, Trigger.PAY, source=Source.NOTIFY,
                                   at=T0.astimezone(shanghai), changes={"transaction_id": "1", "paid_at": paid_at})
    stored = await store.get(payment.out_trade_no)
    assert moved == stored
    assert stored is not None and moved.paid_at is not None and moved.updated_at is not None
    # the same instants, and the same text wherever they are shown (the paid event, views)
    assert (moved.paid_at.isoformat(), moved.updated_at.isoformat()) == (stored.paid_at.isoformat(),  # type: ignore[union-attr]
                                                                        stored.updated_at.isoformat())
