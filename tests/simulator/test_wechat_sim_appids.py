"""WeChat simulator appids: several appids bound to one mchid (an official account, a mini program, an app),
each order checked against them (400 APPID_MCHID_NOT_MATCH otherwise), and the /sim/v1/appids controls."""

from __future__ import annotations

import pytest

from simulator.wechat import LEDGER
from tests.simulator.conftest import MakeWechat, Merchant

MINI_PROGRAM = "wx5c4d8a9e1f2b3c4d"
MOBILE_APP = "wx9f8e7d6c5b4a3921"


@pytest.fixture
async def merchant(make_wechat: MakeWechat) -> Merchant:
    return await make_wechat(appids={MINI_PROGRAM: "mini_program", MOBILE_APP: "app"})


async def test_a_mini_program_order_is_jsapi_with_the_mini_programs_appid(merchant: Merchant) -> None:
    assert (await merchant.place("M20261126000001", appid=MINI_PROGRAM)).status == 200
    await merchant.pay("M20261126000001")
    success = (await merchant.query("M20261126000001")).json()
    assert (success["trade_type"], success["appid"]) == ("JSAPI", MINI_PROGRAM)


async def test_an_app_order_carries_the_apps_appid(merchant: Merchant) -> None:
    body = merchant.order("A20261126000001", appid=MOBILE_APP, payer=...)
    assert (await merchant.request("POST", "/v3/pay/transactions/app", body)).status == 200
    await merchant.pay("A20261126000001")
    success = (await merchant.query("A20261126000001")).json()
    assert (success["trade_type"], success["appid"]) == ("APP", MOBILE_APP)


@pytest.mark.parametrize("path", ["jsapi", "native", "h5", "app"])
async def test_an_appid_not_bound_to_the_mchid_is_appid_mchid_not_match(merchant: Merchant, path: str) -> None:
    body = merchant.order("U20261126000001", appid="wx0000000000000000")
    if path != "jsapi":
        body.pop("payer")
    if path == "h5":
        body["scene_info"] = {"payer_client_ip": "14.23.150.211", "h5_info": {"type": "Wap"}}
    answer = await merchant.request("POST", f"/v3/pay/transactions/{path}", body)
    assert answer.status == 400
    assert answer.json() == {"code": "APPID_MCHID_NOT_MATCH", "message": "appid和mch_id不匹配，请检查后再试",
                             "detail": {"field": "/appid", "issue": "appid和mch_id不匹配，请检查后再试",
                                        "location": "body", "value": "wx0000000000000000"}}
    assert merchant.app[LEDGER].orders(merchant.clock.now()) == []


async def test_the_same_out_trade_no_from_another_appid_is_a_changed_request(merchant: Merchant) -> None:
    await merchant.place("M20261126000002")
    answer = await merchant.place("M20261126000002", appid=MINI_PROGRAM)
    assert (answer.status, answer.json()["code"]) == (400, "INVALID_REQUEST")


async def test_appids_are_listed_bound_and_unbound_through_the_control_api(merchant: Merchant) -> None:
    status, listed = await merchant.control("GET", "/sim/v1/appids")
    assert status == 200 and listed["appids"] == [
        {"appid": merchant.keys.appid, "kind": "official_account", "primary": True},
        {"appid": MINI_PROGRAM, "kind": "mini_program", "primary": False},
        {"appid": MOBILE_APP, "kind": "app", "primary": False},
    ]
    status, _ = await merchant.control("PUT", "/sim/v1/appids/wx1111222233334444", {"kind": "mini_program"})
    assert status == 200
    assert (await merchant.place("M20261126000003", appid="wx1111222233334444")).status == 200

    status, _ = await merchant.control("DELETE", f"/sim/v1/appids/{MINI_PROGRAM}")
    assert status == 200
    refused = await merchant.place("M20261126000004", appid=MINI_PROGRAM)
    assert (refused.status, refused.json()["code"]) == (400, "APPID_MCHID_NOT_MATCH")
    status, error = await merchant.control("DELETE", f"/sim/v1/appids/{MINI_PROGRAM}")
    assert (status, error["error"]["code"]) == (404, "APPID_NOT_BOUND")


@pytest.mark.parametrize(("path", "body"), [("/sim/v1/appids/wx1", {"kind": "website"}),
                                            ("/sim/v1/appids/" + "w" * 33, {})])
async def test_binding_checks_the_appid_and_its_kind(merchant: Merchant, path: str, body: dict[str, str]) -> None:
    status, error = await merchant.control("PUT", path, body)
    assert (status, error["error"]["code"]) == (400, "INVALID_INPUT")


async def test_without_extra_appids_only_the_key_sets_own_is_bound(wechat: Merchant) -> None:
    refused = await wechat.place("M20261126000005", appid=MINI_PROGRAM)
    assert (refused.status, refused.json()["code"]) == (400, "APPID_MCHID_NOT_MATCH")
    assert (await wechat.place("M20261126000006")).status == 200
