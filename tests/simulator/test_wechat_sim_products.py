"""WeChat simulator Native, H5 and App place-order endpoints: answer shapes, field rules, re-entry, and the
trade_type queries, notifications and bills report (docs/wechatpay-products.md)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from payflow.wechat import crypto
from simulator.wechat import LEDGER, NOTIFIER
from tests.simulator.conftest import Merchant, Receiver

H5_SCENE = {"payer_client_ip": "14.23.150.211", "h5_info": {"type": "Wap"}}
CODE_URL = re.compile(r"weixin://wxpay/bizpayurl\?pr=[0-9A-Za-z]{9}")
H5_URL = re.compile(r"https://wx\.tenpay\.com/cgi-bin/mmpayweb-bin/checkmweb\?prepay_id=(wx\d{14}[0-9a-f]{20})"
                    r"&package=\d{10}")
PREPAY_ID = re.compile(r"wx\d{14}[0-9a-f]{20}")


def _body(wechat: Merchant, out_trade_no: str, product: str, **overrides: Any) -> dict[str, Any]:
    # What each product's SDK sends: no payer outside JSAPI; scene_info with h5_info for H5.
    base: dict[str, Any] = {"payer": ...}
    if product == "h5":
        base["scene_info"] = H5_SCENE
    return wechat.order(out_trade_no, **{**base, **overrides})


async def _place(wechat: Merchant, product: str, out_trade_no: str, **overrides: Any) -> Any:
    return await wechat.request("POST", f"/v3/pay/transactions/{product}",
                                _body(wechat, out_trade_no, product, **overrides))


async def test_native_answers_a_signed_code_url(wechat: Merchant) -> None:
    answer = await _place(wechat, "native", "N20261126000001")
    assert answer.status == 200 and list(answer.json()) == ["code_url"]
    assert CODE_URL.fullmatch(answer.json()["code_url"])
    assert answer.headers["Wechatpay-Serial"] == wechat.keys.pub_key_id  # verified by Merchant.request too


async def test_h5_answers_an_h5_url_carrying_the_prepay_id(wechat: Merchant) -> None:
    answer = await _place(wechat, "h5", "H20261126000001")
    assert answer.status == 200 and list(answer.json()) == ["h5_url"]
    match = H5_URL.fullmatch(answer.json()["h5_url"])
    assert match is not None
    assert match.group(1) == wechat.app[LEDGER].get("H20261126000001", wechat.clock.now()).prepay_id


async def test_app_answers_a_prepay_id(wechat: Merchant) -> None:
    answer = await _place(wechat, "app", "A20261126000001")
    assert answer.status == 200 and list(answer.json()) == ["prepay_id"]
    assert PREPAY_ID.fullmatch(answer.json()["prepay_id"])


@pytest.mark.parametrize("product", ["native", "h5", "app"])
async def test_only_jsapi_needs_a_payer_openid(wechat: Merchant, product: str) -> None:
    assert (await _place(wechat, product, f"P{product}20261126001")).status == 200
    order = wechat.app[LEDGER].get(f"P{product}20261126001", wechat.clock.now())
    assert order.openid == ""  # learnt when someone pays
    jsapi = await wechat.place("J20261126000001", payer=...)
    assert (jsapi.status, jsapi.json()["code"], jsapi.json()["detail"]["field"]) == (400, "PARAM_ERROR", "/payer")


@pytest.mark.parametrize("product", ["native", "h5", "app"])
async def test_re_entry_answers_the_same_and_a_changed_body_is_invalid_request(wechat: Merchant,
                                                                               product: str) -> None:
    first = await _place(wechat, product, f"R{product}20261126001")
    again = await _place(wechat, product, f"R{product}20261126001")
    assert again.status == 200 and again.json() == first.json()
    changed = await _place(wechat, product, f"R{product}20261126001", description="another")
    assert (changed.status, changed.json()["code"]) == (400, "INVALID_REQUEST")
    assert changed.json()["message"] == "请求重入时，参数与首次请求时不一致"


async def test_the_code_url_renews_with_the_prepay_id_after_two_hours(wechat: Merchant) -> None:
    first = (await _place(wechat, "native", "N20261126000002")).json()["code_url"]
    wechat.clock.advance(2 * 3600 - 1)
    assert (await _place(wechat, "native", "N20261126000002")).json()["code_url"] == first
    wechat.clock.advance(1)
    assert (await _place(wechat, "native", "N20261126000002")).json()["code_url"] != first


async def test_the_same_body_at_another_products_endpoint_is_not_the_same_order(wechat: Merchant) -> None:
    body = _body(wechat, "X20261126000001", "native")
    assert (await wechat.request("POST", "/v3/pay/transactions/native", body)).status == 200
    other = await wechat.request("POST", "/v3/pay/transactions/app", body)
    assert (other.status, other.json()["code"]) == (400, "INVALID_REQUEST")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"scene_info": ...}, "/scene_info"),
        ({"scene_info": "14.23.150.211"}, "/scene_info"),
        ({"scene_info": {"h5_info": {"type": "Wap"}}}, "/scene_info/payer_client_ip"),
        ({"scene_info": {"payer_client_ip": "14.23.150", "h5_info": {"type": "Wap"}}},
         "/scene_info/payer_client_ip"),
        ({"scene_info": {"payer_client_ip": "14.23.150.211"}}, "/scene_info/h5_info"),
        ({"scene_info": {"payer_client_ip": "14.23.150.211", "h5_info": {}}}, "/scene_info/h5_info/type"),
        ({"scene_info": {"payer_client_ip": "14.23.150.211", "h5_info": {"type": "PC"}}},
         "/scene_info/h5_info/type"),
        ({"scene_info": {"payer_client_ip": "14.23.150.211", "h5_info": {"type": "iOS", "app_name": 7}}},
         "/scene_info/h5_info/app_name"),
    ],
)
async def test_h5_requires_the_payers_ip_and_the_h5_scene(wechat: Merchant, change: dict[str, Any],
                                                          field: str) -> None:
    answer = await _place(wechat, "h5", "H20261126000002", **change)
    assert (answer.status, answer.json()["code"], answer.json()["detail"]["field"]) == (400, "PARAM_ERROR", field)
    assert field.split("/")[-1] in answer.json()["message"]
    assert wechat.app[LEDGER].orders(wechat.clock.now()) == []


@pytest.mark.parametrize("h5_type", ["iOS", "Android", "Wap"])
async def test_each_documented_h5_type_and_an_ipv6_payer_are_accepted(wechat: Merchant, h5_type: str) -> None:
    scene = {"payer_client_ip": "2408:8207:1851:e40::1", "h5_info": {"type": h5_type, "app_name": "王者荣耀"}}
    assert (await _place(wechat, "h5", f"H{h5_type}20261126001", scene_info=scene)).status == 200


@pytest.mark.parametrize("product", ["native", "app"])
async def test_an_optional_scene_info_still_needs_the_payers_ip(wechat: Merchant, product: str) -> None:
    answer = await _place(wechat, product, f"S{product}20261126001", scene_info={"device_id": "013467007045764"})
    assert (answer.status, answer.json()["detail"]["field"]) == (400, "/scene_info/payer_client_ip")
    ok = await _place(wechat, product, f"S{product}20261126002", scene_info={"payer_client_ip": "14.23.150.211"})
    assert ok.status == 200


@pytest.mark.parametrize(("product", "trade_type"), [("jsapi", "JSAPI"), ("native", "NATIVE"), ("h5", "MWEB"),
                                                     ("app", "APP")])
async def test_a_paid_order_queries_its_trade_type_appid_and_payer(wechat: Merchant, product: str,
                                                                   trade_type: str) -> None:
    no = f"Q{product}20261126001"
    if product == "jsapi":
        assert (await wechat.place(no)).status == 200
    else:
        assert (await _place(wechat, product, no)).status == 200
    assert "trade_type" not in (await wechat.query(no)).json()  # unpaid answers carry none (§4.1 captures)
    assert (await wechat.pay(no))[0] == 200
    success = (await wechat.query(no)).json()
    assert (success["trade_type"], success["appid"], success["trade_state"]) == (trade_type, wechat.keys.appid,
                                                                                 "SUCCESS")
    assert re.fullmatch(r"o[0-9A-Za-z_-]{27}", success["payer"]["openid"])


async def test_the_payer_of_a_native_order_can_be_named_when_paying(wechat: Merchant) -> None:
    await _place(wechat, "native", "N20261126000003")
    status, _ = await wechat.pay("N20261126000003", openid="oScannedThePcQrCode000000000")
    assert status == 200
    success = (await wechat.query("N20261126000003")).json()
    assert success["payer"] == {"openid": "oScannedThePcQrCode000000000"}


async def test_the_notification_reports_the_trade_type(wechat: Merchant, receiver: Receiver) -> None:
    await _place(wechat, "h5", "H20261126000003", notify_url=receiver.url)
    await wechat.pay("H20261126000003")
    assert await wechat.app[NOTIFIER].deliver_due(wechat.clock.now()) == 1
    resource = json.loads(receiver.posts[0].body)["resource"]
    plain = json.loads(crypto.aead_decrypt(wechat.keys.apiv3_key, resource["nonce"], "transaction",
                                           resource["ciphertext"]))
    assert (plain["trade_type"], plain["appid"], plain["out_trade_no"]) == ("MWEB", wechat.keys.appid,
                                                                            "H20261126000003")


async def test_the_bill_lists_each_orders_trade_type(wechat: Merchant) -> None:
    for product in ("native", "app"):
        await _place(wechat, product, f"B{product}20261126001")
        await wechat.pay(f"B{product}20261126001")
    applied = await wechat.request("GET", "/v3/bill/tradebill?bill_date=2026-11-26&bill_type=ALL")
    base = str(wechat.client.make_url("")).rstrip("/")
    download = await wechat.request("GET", applied.json()["download_url"][len(base):], verify=False)
    rows = [line.split(",") for line in download.body[3:].decode().split("\r\n")[1:3]]
    assert {(row[6], row[8]) for row in rows} == {("`Bnative20261126001", "`NATIVE"),
                                                  ("`Bapp20261126001", "`APP")}


async def test_recording_a_paid_order_takes_a_trade_type_and_appid(wechat: Merchant) -> None:
    status, _ = await wechat.control("POST", "/sim/v1/transactions", {
        "out_trade_no": "R20261126000001", "amount": 5, "paid": True, "trade_type": "NATIVE",
        "appid": "wxotherappid00001"})
    assert status == 201
    order = wechat.app[LEDGER].get("R20261126000001", wechat.clock.now())
    assert (order.trade_type, order.appid) == ("NATIVE", "wxotherappid00001")
    status, error = await wechat.control("POST", "/sim/v1/transactions", {
        "out_trade_no": "R20261126000002", "amount": 5, "paid": True, "trade_type": "H5"})
    assert status == 400 and "MWEB" in error["error"]["message"]
