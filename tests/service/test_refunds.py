"""The refund use cases on a fake WeChat and a scripted backend, one fake clock: schedules, refusals, races and
the events the backend receives (their bytes and ids)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest

from payflow import backend, errors, models
from payflow.backend import Delivery
from payflow.clock import FakeClock
from payflow.service import NewPayment, NewRefund, PaymentService
from payflow.settings import REFUND_QUERY_AFTER, Settings
from payflow.states import Source, State, Trigger
from payflow.states.refunds import RefundState, RefundTrigger
from payflow.store import PaymentStore
from payflow.sweeper import Sweeper
from payflow.wechat.api import RefundAnswer
from tests.fakes import FakeWechat


@dataclasses.dataclass
class ScriptedBackend:
    """Answers each event with the next scripted Delivery (acknowledged when none is left); keeps what it got."""

    answers: list[Delivery] = dataclasses.field(default_factory=list)
    sent: list[tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=list)

    async def deliver(self, payment: models.Payment) -> Delivery:
        return await self.send(payment.event_id, backend.event_body(payment))

    async def send(self, event_id: str, body: bytes) -> Delivery:
        self.sent.append((event_id, json.loads(body)))
        return self.answers.pop(0) if self.answers else Delivery("acked", 200)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [body for _, body in self.sent if body["type"] == kind]


class QueryingWechat(FakeWechat):
    """FakeWechat whose refund queries answer the scripted statuses (the last repeats)."""

    def __init__(self) -> None:
        super().__init__()
        self.refund_statuses: list[str] = ["PROCESSING"]
        self.refund_queries = 0

    async def query_refund(self, out_refund_no: str) -> RefundAnswer | None:
        self.refund_queries += 1
        status = self.refund_statuses.pop(0) if len(self.refund_statuses) > 1 else self.refund_statuses[0]
        request = next(r for r in self.refunds if r.out_refund_no == out_refund_no)
        succeeded = dt.datetime(2026, 11, 26, 20, 5, tzinfo=dt.UTC) if status == "SUCCESS" else None
        return RefundAnswer(out_refund_no=out_refund_no, status=status, out_trade_no=request.out_trade_no,
                            refund_id=f"5030{out_refund_no}", amount=request.amount, total=request.total,
                            success_time=succeeded)


@pytest.fixture
def wechat() -> QueryingWechat:
    return QueryingWechat()


@pytest.fixture
def events() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
def service(sqlite_store: PaymentStore, settings: Settings, wechat: QueryingWechat, clock: FakeClock,
            events: ScriptedBackend) -> PaymentService:
    return PaymentService(sqlite_store, settings, wechat=wechat, backend=events, clock=clock)


async def _synced(service: PaymentService, amount: int = 1999) -> models.Payment:
    created = await service.create_payment(NewPayment(f"order-{amount}", amount, "Beans", "oPayer"))
    paid = await service.core.apply(created.payment, Trigger.PAY, source=Source.NOTIFY,
                                    payload={"amount": amount, "transaction_id": "4200000001"},
                                    changes={"transaction_id": "4200000001", "paid_amount": amount,
                                             "paid_at": service.now()})
    return await service.core.apply(paid, Trigger.SYNC, source=Source.BACKEND)


async def _sweep(service: PaymentService) -> dict[str, int]:
    report = await Sweeper(service).run_once()
    await service.drain()
    return report.outcomes


async def test_a_processing_refund_is_queried_on_the_schedule_then_every_six_hours(
        service: PaymentService, wechat: QueryingWechat, clock: FakeClock) -> None:
    payment = await _synced(service)
    refund, created = await service.create_refund(NewRefund(payment.out_trade_no, 1999, out_refund_no="R-1"))
    assert created and refund.state is RefundState.PROCESSING
    request = wechat.refunds[0]
    assert (request.amount, request.total, request.transaction_id, request.notify_url) == (
        1999, 1999, "4200000001", service.settings.notify_url)
    gaps = []
    for _ in range(6):
        stored = await service.store.get_refund("R-1")
        assert stored is not None and stored.next_attempt_at is not None
        gaps.append((stored.next_attempt_at - clock.now()).total_seconds())
        clock.advance(gaps[-1])
        assert (await _sweep(service)) == {"refund_query:processing": 1}
    assert gaps == [60.0, 300.0, 1800.0, 3600.0, REFUND_QUERY_AFTER, REFUND_QUERY_AFTER]
    wechat.refund_statuses = ["SUCCESS"]
    clock.advance(REFUND_QUERY_AFTER)
    assert (await _sweep(service)) == {"refund_query:synced": 1}
    assert (await service.store.get(payment.out_trade_no)).state is State.REFUNDED  # type: ignore[union-attr]


async def test_an_abnormal_refund_is_queried_every_six_hours(
        service: PaymentService, wechat: QueryingWechat, clock: FakeClock) -> None:
    payment = await _synced(service)
    wechat.refund_outcomes = ["ABNORMAL"]
    refund, _ = await service.create_refund(NewRefund(payment.out_trade_no, 1999, out_refund_no="R-1"))
    assert refund.state is RefundState.ABNORMAL
    assert refund.next_attempt_at == clock.now() + dt.timedelta(seconds=REFUND_QUERY_AFTER)
    wechat.refund_statuses = ["ABNORMAL"]
    clock.advance(REFUND_QUERY_AFTER)
    assert (await _sweep(service)) == {"refund_query:abnormal": 1}
    stored = await service.store.get_refund("R-1")
    assert stored is not None and stored.next_attempt_at == clock.now() + dt.timedelta(seconds=REFUND_QUERY_AFTER)


async def test_a_refusal_for_good_fails_the_refund_and_tells_the_backend_once(
        service: PaymentService, wechat: QueryingWechat, events: ScriptedBackend) -> None:
    payment = await _synced(service)
    wechat.refund_outcomes = [errors.WechatFinal("no", wechat_code="INVALID_REQUEST", status=400)]
    refund, created = await service.create_refund(NewRefund(payment.out_trade_no, 1999, out_refund_no="R-1"))
    assert created and refund.state is RefundState.FAILED and refund.failure == "INVALID_REQUEST"
    await service.drain()
    [failed] = events.of_type("refund.failed")
    assert failed["out_refund_no"] == "R-1" and failed["state"] == "failed" and failed["failure"] == "INVALID_REQUEST"
    assert failed["event_id"] == backend.derived_event_id(refund.event_id, "refund.failed") != refund.event_id
    stored = await service.store.get_refund("R-1")
    assert stored is not None and stored.next_attempt_at is None
    assert [e.trigger for e in await service.store.refund_events("R-1")] == ["create", "fail", "event_acked"]
    # A failed refund no longer counts: the whole amount can be refunded again.
    again, _ = await service.create_refund(NewRefund(payment.out_trade_no, 1999, out_refund_no="R-2"))
    assert again.state is RefundState.PROCESSING


async def test_a_refusal_worth_retrying_leaves_the_refund_created(
        service: PaymentService, wechat: QueryingWechat, clock: FakeClock) -> None:
    payment = await _synced(service)
    wechat.refund_outcomes = [errors.WechatFinal("balance", wechat_code="NOT_ENOUGH", status=403)]
    with pytest.raises(errors.WechatRetryable) as deferred:
        await service.create_refund(NewRefund(payment.out_trade_no, 1999, out_refund_no="R-1"))
    assert deferred.value.refund.out_refund_no == "R-1"  # type: ignore[attr-defined]
    stored = await service.store.get_refund("R-1")
    assert stored is not None and stored.state is RefundState.CREATED and stored.attempts == 1
    clock.advance(60)
    assert (await _sweep(service)) == {"refund_submit:processing": 1}
    assert [r.out_refund_no for r in wechat.refunds] == ["R-1", "R-1"]
    assert wechat.refunds[0] == wechat.refunds[1]  # the identical request


async def test_news_that_overtook_the_answer_is_kept(service: PaymentService, clock: FakeClock) -> None:
    payment = await _synced(service)
    refund, _ = await service.create_refund(NewRefund(payment.out_trade_no, 1999, out_refund_no="R-1"))
    stale = refund
    done = await service.store.transition_refund(refund, RefundState.SUCCEEDED, RefundTrigger.SUCCEED,
                                                 source=Source.NOTIFY, at=clock.now(),
                                                 changes={"succeeded_at": clock.now()})
    late = RefundAnswer(out_refund_no="R-1", status="PROCESSING", out_trade_no=payment.out_trade_no,
                        refund_id=refund.refund_id, amount=1999)
    kept = await service.refunding.apply_answer(stale, late, Source.QUERY)
    assert kept.state is RefundState.SUCCEEDED and kept.version == done.version


async def test_refund_succeeded_waits_for_the_paid_event(service: PaymentService, clock: FakeClock,
                                                         events: ScriptedBackend) -> None:
    created = await service.create_payment(NewPayment("order-1", 1999, "Beans", "oPayer"))
    paid = await service.core.apply(created.payment, Trigger.PAY, source=Source.NOTIFY,
                                    payload={"amount": 1999, "transaction_id": "4200000001"},
                                    changes={"transaction_id": "4200000001", "paid_amount": 1999})
    assert paid.state is State.NOTIFIED
    service.wechat.refund_outcomes = ["SUCCESS"]  # type: ignore[attr-defined]
    refund, _ = await service.create_refund(NewRefund(paid.out_trade_no, 1999, out_refund_no="R-1"))
    await service.drain()
    assert refund.state is RefundState.SUCCEEDED and events.of_type("refund.succeeded") == []
    await service.forwarding.forward(await service.core.load(paid.out_trade_no))  # the paid event, acked
    clock.advance(service.settings.forward_schedule[0])
    assert (await _sweep(service)) == {"refund_forward:synced": 1}
    assert [body["type"] for _, body in events.sent] == ["payment.paid", "refund.succeeded"]
    assert (await service.store.get(paid.out_trade_no)).state is State.REFUNDED  # type: ignore[union-attr]


@pytest.mark.parametrize(("answer", "note"), [(Delivery("rejected", 422, "no"), "event_rejected")])
async def test_a_rejected_refund_event_is_kept_and_not_retried(
        service: PaymentService, events: ScriptedBackend, answer: Delivery, note: str) -> None:
    payment = await _synced(service)
    events.answers = [answer]
    service.wechat.refund_outcomes = ["SUCCESS"]  # type: ignore[attr-defined]
    await service.create_refund(NewRefund(payment.out_trade_no, 1999, out_refund_no="R-1"))
    await service.drain()
    stored = await service.store.get_refund("R-1")
    assert stored is not None and stored.state is RefundState.SUCCEEDED and stored.next_attempt_at is None
    last = (await service.store.refund_events("R-1"))[-1]
    assert last.trigger == note and last.detail["status"] == 422


async def test_an_exhausted_refund_event_stops_with_an_alert(service: PaymentService, clock: FakeClock,
                                                             events: ScriptedBackend) -> None:
    settings = dataclasses.replace(service.settings, forward_schedule=(1.0, 2.0))
    service.core.settings = settings
    payment = await _synced(service)
    events.answers = [Delivery("retry", 500)] * 3
    service.wechat.refund_outcomes = ["SUCCESS"]  # type: ignore[attr-defined]
    await service.create_refund(NewRefund(payment.out_trade_no, 1999, out_refund_no="R-1"))
    await service.drain()
    for gap in (1.0, 2.0):
        clock.advance(gap)
        await _sweep(service)
    stored = await service.store.get_refund("R-1")
    assert stored is not None and stored.next_attempt_at is None and stored.state is RefundState.SUCCEEDED
    assert [e.trigger for e in await service.store.refund_events("R-1")][-1] == "event_exhausted"
    assert len(events.of_type("refund.succeeded")) == 3


async def test_the_events_bodies(service: PaymentService, events: ScriptedBackend) -> None:
    payment = await _synced(service)
    service.wechat.refund_outcomes = ["SUCCESS"]  # type: ignore[attr-defined]
    refund, _ = await service.create_refund(NewRefund(payment.out_trade_no, 500, reason="damaged",
                                                      out_refund_no="R-1"))
    await service.drain()
    [(event_id, body)] = [(i, b) for i, b in events.sent if b["type"] == "refund.succeeded"]
    assert event_id == refund.event_id == body["event_id"]
    assert body == {"type": "refund.succeeded", "event_id": refund.event_id, "out_refund_no": "R-1",
                    "out_trade_no": payment.out_trade_no, "order_id": payment.order_id, "refund_id": "5030R-1",
                    "amount": 500, "currency": "CNY", "origin": "api", "reason": "damaged", "cause": None,
                    "attach": None, "succeeded_at": body["succeeded_at"]}
    assert json.loads(backend.event_body(payment))["type"] == "payment.paid"
    closed_id = json.loads(backend.closed_event_body(payment, service.now(), "expired"))["event_id"]
    assert closed_id == backend.derived_event_id(payment.event_id, "payment.closed")
    assert closed_id == json.loads(backend.closed_event_body(payment, service.now(), "expired"))["event_id"]


async def test_refunds_of_an_unpaid_or_refunded_payment_are_refused(service: PaymentService) -> None:
    created = await service.create_payment(NewPayment("order-1", 1999, "Beans", "oPayer"))
    with pytest.raises(errors.Conflict) as refused:
        await service.create_refund(NewRefund(created.payment.out_trade_no, 1))
    assert refused.value.state == "prepaid"  # type: ignore[attr-defined]
    payment = await _synced(service, 500)
    service.wechat.refund_outcomes = ["SUCCESS"]  # type: ignore[attr-defined]
    await service.create_refund(NewRefund(payment.out_trade_no, 500))
    await service.drain()
    assert (await service.store.get(payment.out_trade_no)).state is State.REFUNDED  # type: ignore[union-attr]
    with pytest.raises(errors.Conflict):
        await service.create_refund(NewRefund(payment.out_trade_no, 1))
    for bad in (NewRefund(payment.out_trade_no, 0), NewRefund(payment.out_trade_no, 1, out_refund_no="no spaces"),
                NewRefund(payment.out_trade_no, 1, reason="x" * 81)):
        with pytest.raises(errors.InvalidRequest):
            await service.create_refund(bad)


async def test_a_read_asks_wechat_at_most_once_per_interval(service: PaymentService, wechat: QueryingWechat,
                                                            clock: FakeClock) -> None:
    payment = await _synced(service)
    await service.create_refund(NewRefund(payment.out_trade_no, 1999, out_refund_no="R-1"))
    for _ in range(3):
        assert (await service.view_refund("R-1")).state is RefundState.PROCESSING
    assert wechat.refund_queries == 1
    clock.advance(service.settings.read_query_interval)
    wechat.refund_statuses = ["SUCCESS"]
    assert (await service.view_refund("R-1")).state is RefundState.SUCCEEDED
    assert wechat.refund_queries == 2
    await service.drain()
    assert (await service.view_refund("R-1")).state is RefundState.SYNCED
    assert wechat.refund_queries == 2  # no query once it is no longer processing
