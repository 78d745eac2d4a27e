"""WeChat simulator APIv3 surface: place/re-enter/query/close, authentication, field rules, answer
signatures and injected API faults (WECHATPAY_V3.md §1–5, §7)."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from payflow.wechat import crypto
from simulator.wechat import FAULTS, LEDGER, faults
from simulator.wechat.faults import FaultDice, WechatFaults
from tests.simulator.conftest import MakeWechat, Merchant

RFC3339_CST = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+08:00")


async def test_placing_an_order_answers_a_signed_prepay_id(wechat: Merchant) -> None:
    answer = await wechat.place("T20261126000001")
    assert answer.status == 200
    prepay_id = answer.json()["prepay_id"]
    assert re.fullmatch(r"wx\d{14}[0-9a-f]{20}", prepay_id)
    assert answer.headers["Content-Type"] == "application/json; charset=utf-8"
    assert answer.headers["Wechatpay-Signature-Type"] == "WECHATPAY2-SHA256-RSA2048"
    assert answer.headers["Wechatpay-Serial"] == wechat.keys.pub_key_id
    assert re.fullmatch(r"[0-9A-F]{44}-0", answer.headers["Request-ID"])


async def test_re_entry_with_identical_parameters_returns_the_same_prepay_id(wechat: Merchant) -> None:
    first = (await wechat.place("T20261126000002")).json()["prepay_id"]
    # Same parameters, different key order and spacing: still the same order.
    body = json.dumps(dict(reversed(list(wechat.order("T20261126000002").items()))), indent=1).encode()
    again = await wechat.request("POST", "/v3/pay/transactions/jsapi", body)
    assert again.status == 200 and again.json()["prepay_id"] == first


async def test_a_prepay_id_older_than_two_hours_is_renewed_on_re_entry(wechat: Merchant) -> None:
    first = (await wechat.place("T20261126000003")).json()["prepay_id"]
    wechat.clock.advance(2 * 3600)
    again = (await wechat.place("T20261126000003")).json()["prepay_id"]
    assert again != first


@pytest.mark.parametrize("change", [{"amount": {"total": 101, "currency": "CNY"}}, {"description": "other"},
                                    {"attach": "x"}])
async def test_re_entry_with_different_parameters_is_invalid_request(
    wechat: Merchant, change: dict[str, Any]
) -> None:
    await wechat.place("T20261126000004")
    answer = await wechat.place("T20261126000004", **change)
    assert answer.status == 400 and answer.json()["code"] == "INVALID_REQUEST"
    assert answer.headers["Request-ID"].endswith("-268498688")


async def test_placing_a_paid_order_again_is_orderpaid(wechat: Merchant) -> None:
    await wechat.place("T20261126000005")
    assert (await wechat.pay("T20261126000005"))[0] == 200
    answer = await wechat.place("T20261126000005")
    assert (answer.status, answer.json()["code"]) == (400, "ORDERPAID")


async def test_placing_a_closed_order_again_is_order_closed(wechat: Merchant) -> None:
    await wechat.place("T20261126000006")
    assert (await wechat.close("T20261126000006")).status == 204
    answer = await wechat.place("T20261126000006")
    assert (answer.status, answer.json()["code"]) == (400, "ORDER_CLOSED")


async def test_an_unpaid_order_queries_notpay_without_payment_fields(wechat: Merchant) -> None:
    await wechat.place("T20261126000007", attach="cart-7")
    answer = await wechat.query("T20261126000007")
    assert answer.status == 200
    assert answer.json() == {
        "amount": {"payer_currency": "CNY", "total": 100},
        "appid": wechat.keys.appid,
        "mchid": wechat.keys.mchid,
        "out_trade_no": "T20261126000007",
        "promotion_detail": [],
        "scene_info": {"device_id": ""},
        "trade_state": "NOTPAY",
        "trade_state_desc": "订单未支付",
    }
    assert list(answer.json()) == sorted(answer.json())


async def test_a_paid_order_queries_success_by_out_trade_no_and_by_transaction_id(wechat: Merchant) -> None:
    await wechat.place("T20261126000008", attach="cart-8")
    wechat.clock.advance(30)
    await wechat.pay("T20261126000008")
    success = (await wechat.query("T20261126000008")).json()
    assert success["trade_state"] == "SUCCESS" and success["trade_state_desc"] == "支付成功"
    assert re.fullmatch(r"4200\d{24}", success["transaction_id"])
    assert success["success_time"] == "2026-11-26T12:00:30+08:00"
    assert RFC3339_CST.fullmatch(success["success_time"])
    assert success["amount"] == {"currency": "CNY", "payer_currency": "CNY", "payer_total": 100, "total": 100}
    assert success["payer"] == {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"}
    assert (success["trade_type"], success["bank_type"], success["attach"]) == ("JSAPI", "OTHERS", "cart-8")
    path = f"/v3/pay/transactions/id/{success['transaction_id']}?mchid={wechat.keys.mchid}"
    by_id = await wechat.request("GET", path)
    assert by_id.status == 200 and by_id.json() == success


async def test_a_refunded_order_queries_refund(wechat: Merchant) -> None:
    await wechat.place("T20261126000009")
    await wechat.pay("T20261126000009")
    status, _ = await wechat.control("POST", "/sim/v1/transactions/T20261126000009/refund", {"amount": 40})
    assert status == 200
    answer = (await wechat.query("T20261126000009")).json()
    assert answer["trade_state"] == "REFUND" and "transaction_id" in answer
    assert answer["amount"]["total"] == 100


async def test_a_payer_entering_the_password_queries_userpaying_and_blocks_close(wechat: Merchant) -> None:
    await wechat.place("T20261126000010")
    assert (await wechat.control("POST", "/sim/v1/transactions/T20261126000010/paying"))[0] == 200
    answer = (await wechat.query("T20261126000010")).json()
    assert answer["trade_state"] == "USERPAYING" and "transaction_id" not in answer
    closing = await wechat.close("T20261126000010")
    assert (closing.status, closing.json()["code"]) == (202, "USER_PAYING")
    assert (await wechat.pay("T20261126000010"))[0] == 200


@pytest.mark.parametrize("path", ["/v3/pay/transactions/out-trade-no/T20261126009999?mchid={mchid}",
                                  "/v3/pay/transactions/id/4200000000202611260000000000?mchid={mchid}"])
async def test_an_unknown_order_is_404_order_not_exist(wechat: Merchant, path: str) -> None:
    answer = await wechat.request("GET", path.format(mchid=wechat.keys.mchid))
    assert (answer.status, answer.json()["code"]) == (404, "ORDER_NOT_EXIST")
    assert answer.headers["Request-ID"].endswith("-268512771")


@pytest.mark.parametrize(("query", "status", "code"), [("", 400, "PARAM_ERROR"),
                                                       ("?mchid=1900000000", 400, "INVALID_REQUEST")])
async def test_a_query_needs_the_merchants_own_mchid(
    wechat: Merchant, query: str, status: int, code: str
) -> None:
    await wechat.place("T20261126000011")
    answer = await wechat.request("GET", f"/v3/pay/transactions/out-trade-no/T20261126000011{query}")
    assert (answer.status, answer.json()["code"]) == (status, code)
    assert answer.json()["detail"]["field"] == "mchid"


async def test_close_answers_a_signed_204_and_is_re_entrant(wechat: Merchant) -> None:
    await wechat.place("T20261126000012")
    closed = await wechat.close("T20261126000012")
    assert closed.status == 204 and closed.body == b""
    assert closed.headers["Wechatpay-Signature"]  # verified over "TS\nNONCE\n\n" by the fixture
    assert (await wechat.close("T20261126000012")).status == 204
    answer = (await wechat.query("T20261126000012")).json()
    assert answer["trade_state"] == "CLOSED" and answer["trade_state_desc"] == "订单已关闭"
    assert "transaction_id" not in answer


async def test_closing_a_paid_order_is_orderpaid_and_an_unknown_one_is_404(wechat: Merchant) -> None:
    await wechat.place("T20261126000013")
    await wechat.pay("T20261126000013")
    paid = await wechat.close("T20261126000013")
    assert (paid.status, paid.json()["code"]) == (400, "ORDERPAID")
    unknown = await wechat.close("T20261126000099")
    assert (unknown.status, unknown.json()["code"]) == (404, "ORDER_NOT_EXIST")


@pytest.mark.parametrize(("body", "status", "code"), [(b"{}", 400, "PARAM_ERROR"),
                                                      (b'{"mchid":"1900000000"}', 400, "INVALID_REQUEST"),
                                                      (b"not json", 400, "PARAM_ERROR")])
async def test_close_checks_its_body(wechat: Merchant, body: bytes, status: int, code: str) -> None:
    await wechat.place("T20261126000014")
    answer = await wechat.request("POST", "/v3/pay/transactions/out-trade-no/T20261126000014/close", body)
    assert (answer.status, answer.json()["code"]) == (status, code)
    assert (await wechat.query("T20261126000014")).json()["trade_state"] == "NOTPAY"


async def test_an_unpaid_order_past_time_expire_reads_closed(wechat: Merchant) -> None:
    await wechat.place("T20261126000015", time_expire="2026-11-26T12:10:00+08:00")
    wechat.clock.advance(9 * 60)
    assert (await wechat.query("T20261126000015")).json()["trade_state"] == "NOTPAY"
    wechat.clock.advance(60)
    assert (await wechat.query("T20261126000015")).json()["trade_state"] == "CLOSED"
    status, body = await wechat.pay("T20261126000015")
    assert (status, body["error"]["code"]) == (409, "ORDER_EXPIRED")


async def test_a_time_expire_under_a_minute_away_is_raised_to_one_minute(wechat: Merchant) -> None:
    await wechat.place("T20261126000016", time_expire="2026-11-26T04:00:05Z")
    wechat.clock.advance(59)
    assert (await wechat.query("T20261126000016")).json()["trade_state"] == "NOTPAY"
    wechat.clock.advance(1)
    assert (await wechat.query("T20261126000016")).json()["trade_state"] == "CLOSED"


# -- field rules ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        ({"description": "商" * 128}, "PARAM_ERROR", "/description"),
        ({"description": ...}, "PARAM_ERROR", "/description"),
        ({"out_trade_no": "T1234"}, "PARAM_ERROR", "/out_trade_no"),
        ({"out_trade_no": "T" * 33}, "PARAM_ERROR", "/out_trade_no"),
        ({"out_trade_no": "T2026#112601"}, "PARAM_ERROR", "/out_trade_no"),
        ({"amount": {"total": 0}}, "PARAM_ERROR", "/amount/total"),
        ({"amount": {"total": "100"}}, "PARAM_ERROR", "/amount/total"),
        ({"amount": {"total": 1.5}}, "PARAM_ERROR", "/amount/total"),
        ({"amount": {"total": 100, "currency": "USD"}}, "PARAM_ERROR", "/amount/currency"),
        ({"amount": ...}, "PARAM_ERROR", "/amount"),
        ({"payer": {}}, "PARAM_ERROR", "/payer/openid"),
        ({"payer": ...}, "PARAM_ERROR", "/payer"),
        ({"notify_url": "http://pay.example.com/notify"}, "PARAM_ERROR", "/notify_url"),
        ({"notify_url": "https://pay.example.com/notify?x=1"}, "PARAM_ERROR", "/notify_url"),
        ({"notify_url": "ftp://127.0.0.1/notify"}, "PARAM_ERROR", "/notify_url"),
        ({"time_expire": "2026-11-26 20:00:00"}, "PARAM_ERROR", "/time_expire"),
        ({"time_expire": "2026-11-26T20:00:00"}, "PARAM_ERROR", "/time_expire"),
        ({"attach": "a" * 129}, "PARAM_ERROR", "/attach"),
        ({"attach": None}, "PARAM_ERROR", "/attach"),
        ({"support_fapiao": "yes"}, "PARAM_ERROR", "/support_fapiao"),
        ({"appid": "wx0000000000000000"}, "APPID_MCHID_NOT_MATCH", "/appid"),
        ({"mchid": "1900000000"}, "INVALID_REQUEST", "/mchid"),
    ],
)
async def test_a_broken_field_is_400_naming_it(wechat: Merchant, change: dict[str, Any], code: str,
                                                 field: str) -> None:
    change = dict(change)
    out_trade_no = change.pop("out_trade_no", "T20261126000020")
    answer = await wechat.place(out_trade_no, **change)
    assert (answer.status, answer.json()["code"]) == (400, code)
    assert answer.json()["detail"]["field"] == field
    if code == "PARAM_ERROR":
        assert field.split("/")[-1] in answer.json()["message"]
    assert wechat.app[LEDGER].orders(wechat.clock.now()) == []  # nothing was created


async def test_loopback_http_notify_urls_and_the_new_separators_are_accepted(wechat: Merchant) -> None:
    for n, url in enumerate(["http://127.0.0.1:8080/v1/wechat/notify", "http://localhost/n", "http://[::1]:9/n"]):
        answer = await wechat.place(f"T2026-11_26*{n}|x", notify_url=url)
        assert answer.status == 200, answer.json()


# -- authentication and HTTP rules ---------------------------------------------------------------

def _authorization(merchant: Merchant, path: str, **fields: str) -> str:
    """A correctly signed header for GET `path`, then with `fields` swapped in."""
    header = crypto.authorization_header(merchant.keys.mchid, merchant.keys.mch_serial,
                                         merchant.keys.merchant_private_key, "GET", path, b"",
                                         timestamp=int(merchant.clock.now().timestamp()))
    for name, value in fields.items():
        header = re.sub(rf'{name}="[^"]*"', f'{name}="{value}"', header)
    return header


@pytest.mark.parametrize(
    ("fields", "raw", "reason"),
    [
        ({}, "", "missing"),
        ({}, "Bearer abc", "malformed"),
        ({}, 'WECHATPAY2-SHA256-RSA2048 mchid="1"', "malformed"),
        ({"mchid": "1900000000"}, None, "mchid"),
        ({"serial_no": "0" * 40}, None, "serial_no"),
        ({"signature": "A" * 344}, None, "sign not match"),
        ({"nonce_str": "OTHERNONCE"}, None, "sign not match"),
    ],
)
async def test_a_bad_authorization_is_401_sign_error(
    wechat: Merchant, fields: dict[str, str], raw: str | None, reason: str
) -> None:
    await wechat.place("T20261126000030")
    path = f"/v3/pay/transactions/out-trade-no/T20261126000030?mchid={wechat.keys.mchid}"
    header = _authorization(wechat, path, **fields) if raw is None else raw
    answer = await wechat.request("GET", path, headers={"Authorization": header or None})
    assert (answer.status, answer.json()["code"]) == (401, "SIGN_ERROR")
    assert reason in answer.json()["message"]
    assert answer.headers["Request-ID"].endswith("-268443699")
    good = await wechat.request("GET", path, headers={"Authorization": _authorization(wechat, path)})
    assert good.status == 200


async def test_the_signature_covers_path_query_and_body_exactly(wechat: Merchant) -> None:
    body = json.dumps(wechat.order("T20261126000031")).encode()
    signed_for_other = crypto.authorization_header(
        wechat.keys.mchid, wechat.keys.mch_serial, wechat.keys.merchant_private_key, "POST",
        "/v3/pay/transactions/jsapi", body + b" ", timestamp=int(wechat.clock.now().timestamp()))
    answer = await wechat.request("POST", "/v3/pay/transactions/jsapi", body,
                                  headers={"Authorization": signed_for_other})
    assert answer.status == 401
    query_signed = crypto.authorization_header(
        wechat.keys.mchid, wechat.keys.mch_serial, wechat.keys.merchant_private_key, "GET",
        "/v3/pay/transactions/out-trade-no/T20261126000031", b"",
        timestamp=int(wechat.clock.now().timestamp()))
    path = f"/v3/pay/transactions/out-trade-no/T20261126000031?mchid={wechat.keys.mchid}"
    assert (await wechat.request("GET", path, headers={"Authorization": query_signed})).status == 401


@pytest.mark.parametrize(("skew", "status"), [(-299, 404), (299, 404), (300, 401), (-300, 401), (3600, 401)])
async def test_request_timestamps_must_be_within_five_minutes(
    wechat: Merchant, skew: int, status: int
) -> None:
    ts = int(wechat.clock.now().timestamp()) + skew
    path = f"/v3/pay/transactions/out-trade-no/T20261126000032?mchid={wechat.keys.mchid}"
    answer = await wechat.request("GET", path, timestamp=ts)
    assert answer.status == status


@pytest.mark.parametrize(
    "headers",
    [{"Accept": None}, {"User-Agent": ""}, {"Content-Type": "text/plain"},
     {"Wechatpay-Serial": "PUB_KEY_ID_0000000000000000000000"}],
)
async def test_http_rules_of_apiv3_are_400_invalid_request(
    wechat: Merchant, headers: dict[str, str | None]
) -> None:
    answer = await wechat.request("POST", "/v3/pay/transactions/jsapi", wechat.order("T20261126000033"),
                                  headers=headers)
    assert (answer.status, answer.json()["code"]) == (400, "INVALID_REQUEST")


async def test_unknown_paths_and_methods_answer_signed_json(wechat: Merchant) -> None:
    missing = await wechat.request("GET", "/v3/pay/transactions/nothing-here")
    assert missing.status == 404 and missing.json()["code"] == "NOT_FOUND"
    wrong = await wechat.request("DELETE", "/v3/pay/transactions/jsapi")
    assert wrong.status == 405


# -- injected API faults -------------------------------------------------------------------------

async def test_frequency_limited_and_system_error_are_signed_and_apply_nothing(
    make_wechat: MakeWechat
) -> None:
    wechat = await make_wechat(faults=WechatFaults(api_429=1.0))
    limited = await wechat.place("T20261126000040")
    assert (limited.status, limited.json()["code"]) == (429, "FREQUENCY_LIMITED")
    status, _ = await wechat.control("PUT", "/sim/v1/faults", {"api_500": 1.0})
    assert status == 200
    failed = await wechat.place("T20261126000040")
    assert (failed.status, failed.json()["code"]) == (500, "SYSTEM_ERROR")
    assert wechat.app[LEDGER].orders(wechat.clock.now()) == []


async def test_an_applied_system_error_leaves_the_order_placed(make_wechat: MakeWechat) -> None:
    wechat = await make_wechat(faults=WechatFaults(api_500=1.0, api_500_applied=1.0))
    answer = await wechat.place("T20261126000041")
    assert answer.status == 500
    await wechat.control("PUT", "/sim/v1/faults", {})
    assert (await wechat.query("T20261126000041")).json()["trade_state"] == "NOTPAY"


async def test_api_faults_follow_the_seed(make_wechat: MakeWechat) -> None:
    async def statuses(seed: int) -> list[int]:
        wechat = await make_wechat(faults=WechatFaults(api_500=0.3, api_429=0.2), seed=seed)
        return [(await wechat.query(f"T2026112600{n:04d}")).status for n in range(30)]

    first, again, other = await statuses(5), await statuses(5), await statuses(6)
    assert first == again != other
    assert {500, 429, 404} == set(first)


async def test_api_latency_delays_the_answer_but_not_its_content(make_wechat: MakeWechat) -> None:
    wechat = await make_wechat(faults=WechatFaults(api_latency_min=0.05, api_latency_max=0.06))
    started = time.monotonic()
    assert (await wechat.place("T20261126000042")).status == 200
    assert time.monotonic() - started >= 0.05


async def test_each_api_has_its_own_rate_limit(make_wechat: MakeWechat) -> None:
    wechat = await make_wechat(faults=WechatFaults(limit_jsapi=1.0, limit_query=2.0))
    assert (await wechat.place("T20261126000050")).status == 200
    limited = await wechat.place("T20261126000051")  # the second order within the same second
    assert (limited.status, limited.json()["code"]) == (429, "FREQUENCY_LIMITED")
    assert "Wechatpay-Signature" in limited.headers  # signed, as WeChat's errors are
    # Queries have their own budget: two go through while placement is limited, the third does not.
    assert [(await wechat.query("T20261126000050")).status for _ in range(3)] == [200, 200, 429]
    assert wechat.app[FAULTS].injected["limited_jsapi"] == 1
    assert [o.out_trade_no for o in wechat.app[LEDGER].orders(wechat.clock.now())] == ["T20261126000050"]


def test_the_rate_limit_refills_at_its_rate() -> None:
    now = [0.0]
    dice = FaultDice(WechatFaults(limit_close=2.0), monotonic=lambda: now[0])
    assert [dice.admit("close") for _ in range(3)] == [True, True, False]  # a second's worth, then no more
    now[0] = 0.5
    assert [dice.admit("close") for _ in range(2)] == [True, False]  # half a second: one more
    assert dice.admit("jsapi") and dice.admit("other")  # no limit set for these
    assert faults.api_of("POST", "/v3/pay/transactions/jsapi") == "jsapi"
    assert faults.api_of("POST", "/v3/pay/transactions/out-trade-no/T1/close") == "close"
    assert faults.api_of("GET", "/v3/pay/transactions/id/420000") == "query"
    assert faults.api_of("GET", "/v3/billdownload/file") == "bill"
