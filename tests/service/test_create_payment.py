from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import pytest

from payflow import errors
from payflow.clock import FakeClock
from payflow.service import NewPayment, PaymentService
from payflow.states import State
from payflow.store import PaymentStore
from tests.factories import T0
from tests.fakes import FakeWechat


def _request(**overrides: object) -> NewPayment:
    fields: dict[str, object] = {"order_id": "order-1", "amount": 1999, "description": "Coffee beans",
                                 "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"}
    fields.update(overrides)
    return NewPayment(**fields)  # type: ignore[arg-type]


async def test_stores_created_before_placing_then_prepaid(
    service: PaymentService, wechat: FakeWechat, sqlite_store: PaymentStore
) -> None:
    seen_before_answer: list[State] = []

    async def look() -> None:
        stored = await sqlite_store.get_by_order_id("order-1")
        assert stored is not None
        seen_before_answer.append(stored.state)

    wechat.before_answer = look
    result = await service.create_payment(_request(attach="cart-7"))
    assert seen_before_answer == [State.CREATED]  # durable before WeChat heard of it
    payment = result.payment
    assert result.new and payment.state is State.PREPAID
    assert payment.prepay_id == f"wx_prepay_{payment.out_trade_no}"
    assert result.pay_params is not None and result.pay_params["package"] == f"prepay_id={payment.prepay_id}"
    assert payment.next_attempt_at == T0 + dt.timedelta(seconds=30)  # first query of the schedule
    [order] = wechat.placed
    assert (order.out_trade_no, order.amount, order.attach) == (payment.out_trade_no, 1999, "cart-7")
    assert order.notify_url == "https://pay.example.com/v1/wechat/notify"
    assert order.time_expire == T0 + dt.timedelta(hours=2)
    assert order.time_expire.utcoffset() == dt.timedelta(hours=8)  # WeChat times are +08:00
    events = await service.timeline(payment.out_trade_no)
    assert [(e.trigger, e.source) for e in events] == [("create", "api"), ("prepay", "api")]


async def test_generated_out_trade_no_fits_wechat_rules(service: PaymentService) -> None:
    numbers = {(await service.create_payment(_request(order_id=f"o{i}"))).payment.out_trade_no for i in range(20)}
    assert len(numbers) == 20
    for number in numbers:
        assert 6 <= len(number) <= 32 and number.isalnum()


async def test_same_request_returns_the_same_payment(service: PaymentService, wechat: FakeWechat) -> None:
    first = await service.create_payment(_request(expires_in=600))
    again = await service.create_payment(_request(expires_in=900))
    assert not again.new and again.payment == first.payment
    assert again.pay_params == first.pay_params
    assert len(wechat.placed) == 1


@pytest.mark.parametrize(
    "change", [{"amount": 1}, {"description": "Tea"}, {"openid": "other"}, {"attach": "x"},
               {"out_trade_no": "OTHER12345"}]
)
async def test_same_order_id_different_parameters_conflicts(service: PaymentService, change: dict[str, object]) -> None:
    await service.create_payment(_request())
    with pytest.raises(errors.Conflict) as info:
        await service.create_payment(_request(**change))
    assert next(iter(change)) in str(info.value)


async def test_out_trade_no_taken_by_another_order_conflicts(service: PaymentService) -> None:
    await service.create_payment(_request(out_trade_no="CHOSEN0001"))
    with pytest.raises(errors.Conflict, match="out_trade_no"):
        await service.create_payment(_request(order_id="order-2", out_trade_no="CHOSEN0001"))


async def test_concurrent_duplicates_make_one_payment(service: PaymentService, wechat: FakeWechat) -> None:
    results = await asyncio.gather(*(service.create_payment(_request()) for _ in range(5)))
    assert len({r.payment.out_trade_no for r in results}) == 1
    assert sum(r.new for r in results) == 1
    assert all(r.payment.state is State.PREPAID for r in results)


async def test_retryable_failure_leaves_created_and_a_retry_places_it(
    service: PaymentService, wechat: FakeWechat, clock: FakeClock
) -> None:
    wechat.outcomes = [errors.WechatRetryable("timeout")]
    with pytest.raises(errors.WechatRetryable):
        await service.create_payment(_request())
    [payment] = [await service.store.get_by_order_id("order-1")]
    assert payment is not None and payment.state is State.CREATED
    assert payment.next_attempt_at == T0 + dt.timedelta(seconds=10)  # the sweeper's safety net
    again = await service.create_payment(_request())
    assert again.payment.state is State.PREPAID and again.payment.out_trade_no == payment.out_trade_no
    # the identical order went out twice (WeChat re-entry), never a different one
    assert wechat.placed[0] == wechat.placed[1]


async def test_final_failure_closes_with_wechat_code(service: PaymentService, wechat: FakeWechat) -> None:
    wechat.outcomes = [errors.WechatFinal("bad openid", wechat_code="PARAM_ERROR", status=400)]
    with pytest.raises(errors.WechatFinal):
        await service.create_payment(_request())
    payment = await service.store.get(wechat.placed[0].out_trade_no)
    assert payment is not None and payment.state is State.CLOSED and payment.next_attempt_at is None
    last = (await service.timeline(payment.out_trade_no))[-1]
    assert last.trigger == "close" and last.detail["wechat_code"] == "PARAM_ERROR"


async def test_without_a_wechat_client_the_payment_waits(sqlite_store: PaymentStore, settings, clock) -> None:  # type: ignore[no-untyped-def]
    service = PaymentService(sqlite_store, settings, wechat=None, clock=clock)
    with pytest.raises(errors.NotConfigured, match="PAYFLOW_WECHAT_MCHID"):
        await service.create_payment(_request())
    payment = await sqlite_store.get_by_order_id("order-1")
    assert payment is not None and payment.state is State.CREATED


async def test_without_a_notify_url_nothing_is_placed(sqlite_store: PaymentStore, settings, clock) -> None:  # type: ignore[no-untyped-def]
    wechat = FakeWechat()
    service = PaymentService(sqlite_store, dataclasses.replace(settings, notify_url=None), wechat=wechat,
                             clock=clock)
    with pytest.raises(errors.NotConfigured, match="PAYFLOW_NOTIFY_URL"):
        await service.create_payment(_request())
    assert wechat.placed == []
    payment = await sqlite_store.get_by_order_id("order-1")
    assert payment is not None and payment.state is State.CREATED


async def test_unknown_payment(service: PaymentService) -> None:
    with pytest.raises(errors.NotFound):
        await service.get_payment("NOPE000001")
    with pytest.raises(errors.NotFound):
        await service.timeline("NOPE000001")


async def test_a_request_wechat_refused_releases_its_order_id_for_a_corrected_one(
    service: PaymentService, wechat: FakeWechat
) -> None:
    wechat.outcomes = [errors.WechatFinal("openid invalid", wechat_code="PARAM_ERROR", status=400)]
    with pytest.raises(errors.WechatFinal):
        await service.create_payment(_request(openid="bad-openid"))
    refused = await service.store.get(wechat.placed[0].out_trade_no)
    assert refused is not None and refused.state is State.CLOSED
    assert await service.store.get_by_order_id("order-1") is None  # no live payment holds order-1
    [*_, closing] = await service.timeline(refused.out_trade_no)
    assert closing.detail["reason"] == "placement_rejected" and closing.detail["order_id_released"] is True

    corrected = await service.create_payment(_request())
    assert corrected.new and corrected.payment.state is State.PREPAID
    assert corrected.payment.out_trade_no != refused.out_trade_no
    assert await service.store.get_by_order_id("order-1") == corrected.payment
    with pytest.raises(errors.Conflict):  # and now the order is held again, as by any live payment
        await service.create_payment(_request(openid="bad-openid"))


@pytest.mark.parametrize("code", ["INVALID_REQUEST", "OUT_TRADE_NO_USED", "ORDERPAID", None])
async def test_a_refusal_that_may_leave_an_order_at_wechat_keeps_the_order_id(
    service: PaymentService, wechat: FakeWechat, code: str | None
) -> None:
    wechat.outcomes = [errors.WechatFinal("refused", wechat_code=code, status=400)]
    with pytest.raises(errors.WechatFinal):
        await service.create_payment(_request())
    kept = await service.store.get_by_order_id("order-1")
    assert kept is not None and kept.state is State.CLOSED
    assert kept.out_trade_no == wechat.placed[0].out_trade_no  # the refused payment still holds the order
    with pytest.raises(errors.Conflict):
        await service.create_payment(_request(openid="another-openid"))
