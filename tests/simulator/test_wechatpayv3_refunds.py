"""The real `wechatpayv3` 2.0.4 SDK (public-key mode, its own response verification on) against the simulator's
refunds: `refund()` with re-entry and errors, `query_refund()`, and its `callback()` on a REFUND.SUCCESS post."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from wechatpayv3 import WeChatPay

from payflow.clock import SystemClock
from payflow.devkeys import KeySet
from simulator.wechat import NOTIFIER
from tests.simulator.test_wechatpayv3_interop import OPENID, Sdk, start_sdk


@pytest.fixture
async def sdk(aiohttp_server: Any, wechat_keys: KeySet) -> Sdk:
    return await start_sdk(aiohttp_server, wechat_keys)


async def _paid(wxpay: WeChatPay, out_trade_no: str, total: int) -> None:
    code, _ = await asyncio.to_thread(wxpay.pay, description="退款测试", out_trade_no=out_trade_no,
                                      amount={"total": total}, payer={"openid": OPENID})
    assert code == 200
    url = f"{wxpay._core._gate_way}/sim/v1/transactions/{out_trade_no}/pay"
    async with aiohttp.ClientSession() as session, session.post(url) as paid:
        assert paid.status == 200


async def test_the_sdk_refunds_re_enters_and_queries(sdk: Sdk) -> None:
    wxpay, _, _ = sdk
    await _paid(wxpay, "SDK20261126000101", 188)
    amount = {"refund": 88, "total": 188, "currency": "CNY"}
    code, message = await asyncio.to_thread(wxpay.refund, out_refund_no="SDKR20261126000101", amount=amount,
                                            out_trade_no="SDK20261126000101", reason="商品已售完")
    accepted = json.loads(message)
    assert code == 200 and (accepted["status"], accepted["amount"]["refund"]) == ("PROCESSING", 88)
    code, message = await asyncio.to_thread(wxpay.refund, out_refund_no="SDKR20261126000101", amount=amount,
                                            out_trade_no="SDK20261126000101", reason="商品已售完")
    assert code == 200 and json.loads(message)["refund_id"] == accepted["refund_id"]  # re-entry

    code, message = await asyncio.to_thread(wxpay.query_refund, out_refund_no="SDKR20261126000101")
    queried = json.loads(message)
    assert code == 200 and (queried["status"], queried["refund_id"]) == ("SUCCESS", accepted["refund_id"])
    assert "success_time" in queried
    code, message = await asyncio.to_thread(wxpay.query, out_trade_no="SDK20261126000101")
    assert json.loads(message)["trade_state"] == "REFUND"

    code, message = await asyncio.to_thread(wxpay.refund, out_refund_no="SDKR20261126000102",
                                            amount={"refund": 101, "total": 188, "currency": "CNY"},
                                            transaction_id=queried["transaction_id"])
    assert code == 400 and json.loads(message)["code"] == "INVALID_REQUEST"  # errors come back raw, unverified
    code, message = await asyncio.to_thread(wxpay.query_refund, out_refund_no="SDKR-NONE")
    assert code == 404 and json.loads(message)["code"] == "RESOURCE_NOT_EXISTS"


async def test_the_sdk_callback_opens_the_refund_notification(sdk: Sdk) -> None:
    wxpay, merchant, simulator = sdk
    await _paid(wxpay, "SDK20261126000103", 66)
    code, _ = await asyncio.to_thread(wxpay.refund, out_refund_no="SDKR20261126000103",
                                      out_trade_no="SDK20261126000103",
                                      amount={"refund": 66, "total": 66, "currency": "CNY"})
    assert code == 200
    # The payment's notification and the refund's, which completes in the notifier's own pass.
    assert await simulator[NOTIFIER].deliver_due(SystemClock().now()) == 2
    results = {r["event_type"]: r for r in merchant.results if r is not None}
    assert len(merchant.results) == 2 and set(results) == {"TRANSACTION.SUCCESS", "REFUND.SUCCESS"}
    refund = results["REFUND.SUCCESS"]
    assert (refund["summary"], refund["resource_type"]) == ("退款成功", "encrypt-resource")
    resource = refund["resource"]
    assert (resource["out_trade_no"], resource["out_refund_no"], resource["refund_status"]) == (
        "SDK20261126000103", "SDKR20261126000103", "SUCCESS")
    assert resource["amount"] == {"total": 66, "refund": 66, "payer_total": 66, "payer_refund": 66}
    [notification] = simulator[NOTIFIER].refund_notifications("SDKR20261126000103")
    assert notification.state == "acked"
