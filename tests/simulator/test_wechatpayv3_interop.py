"""The real `wechatpayv3` 2.0.4 SDK (public-key mode, its own response verification on) against the
simulator: place, query, pay, close, bill download, and its `callback()` on the notifier's posts."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import hashlib
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from wechatpayv3 import WeChatPay, WeChatPayType

from payflow.clock import SHANGHAI, SystemClock
from payflow.devkeys import KeySet
from simulator.wechat import NOTIFIER, create_app
from simulator.wechat.faults import WechatFaults

OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"


class SdkMerchant:
    """A notify_url handled the way the SDK's README says: `callback()`, 204 if it verified, else 4xx."""

    def __init__(self) -> None:
        self.wxpay: WeChatPay | None = None
        self.results: list[dict[str, Any] | None] = []

    async def handle(self, request: web.Request) -> web.Response:
        assert self.wxpay is not None
        result = self.wxpay.callback(dict(request.headers), await request.read())
        self.results.append(result)
        if result is None:
            return web.json_response({"code": "FAIL", "message": "验签失败"}, status=401)
        return web.Response(status=204)


Sdk = tuple[WeChatPay, SdkMerchant, web.Application]


async def _payer_pays(wxpay: WeChatPay, out_trade_no: str) -> None:
    url = f"{wxpay._core._gate_way}/sim/v1/transactions/{out_trade_no}/pay"
    async with aiohttp.ClientSession() as session, session.post(url) as paid:
        assert paid.status == 200


@pytest.fixture
async def sdk(aiohttp_server: Any, wechat_keys: KeySet) -> Sdk:
    return await start_sdk(aiohttp_server, wechat_keys, faults=WechatFaults(probe=1.0))


async def start_sdk(aiohttp_server: Any, wechat_keys: KeySet, **simulator_options: Any) -> Sdk:
    """A simulator (created with `simulator_options`), a merchant's notify server, and the SDK in public-key
    mode pointed at the simulator."""
    simulator = create_app(wechat_keys, notify=False, **simulator_options)
    server = await aiohttp_server(simulator)
    merchant = SdkMerchant()
    notify_app = web.Application()
    notify_app.router.add_post("/notify", merchant.handle)
    notify_server = await aiohttp_server(notify_app)
    wxpay = WeChatPay(
        wechatpay_type=WeChatPayType.JSAPI,
        mchid=wechat_keys.mchid,
        private_key=wechat_keys.merchant_key_file.read_text(),
        cert_serial_no=wechat_keys.mch_serial,
        apiv3_key=wechat_keys.apiv3_key,
        appid=wechat_keys.appid,
        notify_url=str(notify_server.make_url("/notify")),
        public_key=wechat_keys.pub_key_file.read_text(),
        public_key_id=wechat_keys.pub_key_id,
        timeout=(5, 10),
    )
    wxpay._core._gate_way = str(server.make_url("")).rstrip("/")
    merchant.wxpay = wxpay
    return wxpay, merchant, simulator


async def test_the_sdk_places_queries_pays_and_closes(sdk: Sdk) -> None:
    wxpay, _, _ = sdk
    code, message = await asyncio.to_thread(wxpay.pay, description="Image形象店-深圳腾大-QQ公仔",
                                            out_trade_no="SDK20261126000001", amount={"total": 188},
                                            payer={"openid": OPENID}, attach="sdk")
    assert code == 200 and json.loads(message)["prepay_id"].startswith("wx")
    code, message = await asyncio.to_thread(wxpay.query, out_trade_no="SDK20261126000001")
    assert code == 200 and json.loads(message)["trade_state"] == "NOTPAY"

    await _payer_pays(wxpay, "SDK20261126000001")
    code, message = await asyncio.to_thread(wxpay.query, out_trade_no="SDK20261126000001")
    success = json.loads(message)
    assert code == 200 and success["trade_state"] == "SUCCESS" and success["amount"]["payer_total"] == 188
    code, message = await asyncio.to_thread(wxpay.query, transaction_id=success["transaction_id"])
    assert code == 200 and json.loads(message) == success

    code, _ = await asyncio.to_thread(wxpay.pay, description="second", out_trade_no="SDK20261126000002",
                                      amount={"total": 1}, payer={"openid": OPENID})
    assert code == 200
    code, message = await asyncio.to_thread(wxpay.close, out_trade_no="SDK20261126000002")
    assert (code, message) == (204, "")
    code, message = await asyncio.to_thread(wxpay.query, out_trade_no="SDK20261126000002")
    assert json.loads(message)["trade_state"] == "CLOSED"
    code, message = await asyncio.to_thread(wxpay.close, out_trade_no="SDK20261126000001")
    assert code == 400 and json.loads(message)["code"] == "ORDERPAID"  # errors come back raw, unverified


async def test_the_sdk_downloads_a_gzip_bill_matching_its_hash(sdk: Sdk) -> None:
    wxpay, _, _ = sdk
    await asyncio.to_thread(wxpay.pay, description="billed", out_trade_no="SDK20261126000003",
                            amount={"total": 99}, payer={"openid": OPENID})
    await _payer_pays(wxpay, "SDK20261126000003")
    today = dt.datetime.now(SHANGHAI).date().isoformat()
    code, message = await asyncio.to_thread(wxpay.trade_bill, bill_date=today)
    assert code == 200
    info = json.loads(message)
    code, data = await asyncio.to_thread(wxpay.download_bill, info["download_url"])
    assert code == 200 and isinstance(data, bytes)
    plain = gzip.decompress(data)
    assert hashlib.sha1(plain).hexdigest() == info["hash_value"]
    assert "`SDK20261126000003" in plain.decode("utf-8-sig")


async def test_the_sdk_callback_accepts_the_notification_and_rejects_the_probe(sdk: Sdk) -> None:
    wxpay, merchant, simulator = sdk
    await asyncio.to_thread(wxpay.pay, description="notified", out_trade_no="SDK20261126000004",
                            amount={"total": 5}, payer={"openid": OPENID}, attach="a-4")
    await _payer_pays(wxpay, "SDK20261126000004")
    assert await simulator[NOTIFIER].deliver_due(SystemClock().now()) == 1
    probe, notification = merchant.results
    assert probe is None  # a WECHATPAY/SIGNTEST/ probe fails the SDK's verification
    assert notification is not None and notification["event_type"] == "TRANSACTION.SUCCESS"
    resource = notification["resource"]
    assert (resource["out_trade_no"], resource["trade_state"], resource["attach"]) == (
        "SDK20261126000004", "SUCCESS", "a-4")
    assert resource["amount"] == {"total": 5, "payer_total": 5, "currency": "CNY", "payer_currency": "CNY"}
    stats = simulator[NOTIFIER].get("SDK20261126000004")
    assert stats is not None and (stats.state, stats.stats.probes_acked) == ("acked", 0)
