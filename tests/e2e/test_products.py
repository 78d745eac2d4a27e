"""Each WeChat Pay product end to end against the simulator: placed on its own API with its own appid, paid,
notified, forwarded, and its notification's appid checked against the payment's."""

from __future__ import annotations

from typing import Any

import pytest

from payflow.states import State
from simulator.wechat.appkeys import APPIDS
from tests.e2e.conftest import World

PRODUCTS: list[tuple[dict[str, Any], str, str]] = [
    ({"trade_type": "native", "openid": None}, "code_url", "NATIVE"),
    ({"trade_type": "h5", "openid": None, "payer_client_ip": "203.0.113.7", "h5_type": "Android"}, "h5_url", "MWEB"),
    ({"trade_type": "app", "openid": None}, "app_params", "APP"),
    ({"trade_type": "jsapi"}, "pay_params", "JSAPI"),
]


@pytest.mark.parametrize(("product", "answer", "wechat_type"), PRODUCTS)
async def test_each_product_is_paid_and_forwarded(world: World, product: dict[str, Any], answer: str,
                                                  wechat_type: str) -> None:
    created = await world.create("order-1", **product)
    assert created["state"] == "prepaid" and created[answer]
    no = created["out_trade_no"]
    await world.register_at_backend("order-1")
    await world.pay(no)
    assert await world.notify() == 1
    await world.service.drain()
    assert (await world.payment(no)).state is State.SYNCED
    txn = await world.service.wechat.query(no)
    assert txn is not None and txn.raw.get("trade_type") == wechat_type
    assert world.backend_order("order-1").paid_events_received == 1


MINI_APPID = "wx6c1f2e0a9b8d7c5e"


@pytest.mark.parametrize("world_overrides", [{"wechat_appids": (("miniprogram", MINI_APPID),)}])
async def test_a_mini_program_pays_under_its_own_appid(world: World) -> None:
    status, refused = await world.api("POST", "/v1/payments", json={
        "order_id": "order-1", "amount": 1999, "description": "Coffee beans", "trade_type": "miniprogram",
        "openid": "oMiniPayer"})
    # Not bound to the merchant at WeChat yet: refused outright, so the order_id is free for the retry.
    assert status == 502 and refused["error"]["wechat_code"] == "APPID_MCHID_NOT_MATCH"
    world.wechat.app[APPIDS].bind(MINI_APPID, "mini_program")
    created = await world.create("order-1", trade_type="miniprogram", openid="oMiniPayer")
    assert created["pay_params"]["appId"] == MINI_APPID
    no = created["out_trade_no"]
    await world.register_at_backend("order-1")
    await world.pay(no)
    assert await world.notify() == 1  # WeChat's notification names the mini program's appid: it is this payment's
    await world.service.drain()
    assert (await world.payment(no)).state is State.SYNCED
    txn = await world.service.wechat.query(no, MINI_APPID)
    assert txn is not None and txn.appid == MINI_APPID and txn.raw.get("trade_type") == "JSAPI"
