"""Every WeChat Pay product through one create: what each sends WeChat, what the payer's front end gets back,
which appid each is placed with, and that a notification must name the payment's own appid."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from payflow import errors
from payflow.clock import FakeClock
from payflow.service import NewPayment, PaymentService
from payflow.settings import Settings
from payflow.states import Source, State
from payflow.store import PaymentStore
from payflow.wechat.api import Transaction
from payflow.wechat.notify import NotificationVerifier
from tests.fakes import FakeWechat

MINI_APPID, APP_APPID = "wxminiprogram00001", "wxmobileapp000001"


def _request(**overrides: Any) -> NewPayment:
    fields: dict[str, Any] = {"order_id": "order-1", "amount": 1999, "description": "Coffee beans"}
    fields.update(overrides)
    return NewPayment(**fields)


@pytest.fixture
def products(sqlite_store: PaymentStore, settings: Settings, wechat: FakeWechat, clock: FakeClock,
             verifier: NotificationVerifier) -> PaymentService:
    configured = dataclasses.replace(settings, wechat_appids=(("miniprogram", MINI_APPID), ("app", APP_APPID)))
    return PaymentService(sqlite_store, configured, wechat=wechat, verifier=verifier, clock=clock)


async def test_native_answers_the_code_url_and_keeps_it(products: PaymentService, wechat: FakeWechat) -> None:
    created = await products.create_payment(_request(trade_type="native"))
    payment = created.payment
    assert payment.state is State.PREPAID and payment.prepay_id is None
    assert created.view()["code_url"] == f"weixin://wxpay/bizpayurl?pr={payment.out_trade_no}" == payment.pay_url
    assert "pay_params" not in created.view()
    [order] = wechat.placed
    assert (order.api, order.openid, order.appid) == ("native", None, products.settings.wechat_appid)
    again = await products.create_payment(_request(trade_type="native"))  # a retry answers the same URL
    assert again.view()["code_url"] == payment.pay_url and len(wechat.placed) == 1


async def test_h5_sends_the_scene_and_answers_the_h5_url(products: PaymentService, wechat: FakeWechat) -> None:
    created = await products.create_payment(_request(trade_type="h5", payer_client_ip="203.0.113.7", h5_type="iOS"))
    assert created.view()["h5_url"].startswith("https://wx.tenpay.com/")
    [order] = wechat.placed
    assert (order.api, order.payer_client_ip, order.h5_type) == ("h5", "203.0.113.7", "iOS")
    with pytest.raises(errors.Conflict, match="payer_client_ip"):  # the scene is part of the order
        await products.create_payment(_request(trade_type="h5", payer_client_ip="203.0.113.8", h5_type="iOS"))


async def test_app_answers_the_app_sdks_parameters_with_the_apps_appid(
    products: PaymentService, wechat: FakeWechat
) -> None:
    created = await products.create_payment(_request(trade_type="app"))
    params = created.view()["app_params"]
    assert params["appid"] == APP_APPID and params["prepayid"] == created.payment.prepay_id
    assert params["package"] == "Sign=WXPay"
    assert created.payment.appid == APP_APPID and wechat.placed[0].appid == APP_APPID


async def test_a_mini_program_pays_by_jsapi_with_its_own_appid(products: PaymentService, wechat: FakeWechat) -> None:
    created = await products.create_payment(_request(trade_type="miniprogram", openid="oMiniPayer"))
    [order] = wechat.placed
    assert (order.api, order.appid, order.openid) == ("jsapi", MINI_APPID, "oMiniPayer")
    assert created.view()["pay_params"]["appId"] == MINI_APPID
    assert created.payment.trade_type == "miniprogram"


async def test_a_closed_payment_offers_nothing_to_pay(products: PaymentService, wechat: FakeWechat) -> None:
    wechat.outcomes = [errors.WechatFinal("refused", wechat_code="OUT_TRADE_NO_USED", status=403)]
    with pytest.raises(errors.WechatFinal):
        await products.create_payment(_request(trade_type="native"))
    refused = await products.create_payment(_request(trade_type="native"))  # the order stays with the closed one
    assert refused.payment.state is State.CLOSED and refused.view()["code_url"] is None


async def test_a_notification_must_name_the_payments_own_appid(products: PaymentService) -> None:
    created = await products.create_payment(_request(trade_type="app"))
    no = created.payment.out_trade_no
    txn = Transaction(out_trade_no=no, trade_state="SUCCESS", transaction_id="4200000001", amount=1999,
                      mchid=products.settings.wechat_mchid, appid=MINI_APPID)  # the merchant's, not this payment's
    assert await products.paid.confirm_paid(txn, Source.QUERY) == "appid_mismatch"
    assert (await products.store.get(no)).state is State.PREPAID  # type: ignore[union-attr]
    right = dataclasses.replace(txn, appid=APP_APPID)
    assert await products.paid.confirm_paid(right, Source.QUERY) == "accepted"
