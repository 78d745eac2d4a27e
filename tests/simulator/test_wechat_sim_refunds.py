"""WeChat simulator refunds (docs/wechatpay-refunds.md): the apply and query APIs with WeChat's checks and
errors, re-entry, completion on a FakeClock (PROCESSING → SUCCESS / ABNORMAL), the order's REFUND state, and
the merchant-platform refunds and operator actions of /sim/v1."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from simulator.wechat import FAULTS, LEDGER, REFUNDS
from simulator.wechat.faults import FaultDice, WechatFaults
from tests.simulator.conftest import T0, Answer, MakeWechat, Merchant

REFUNDS_PATH = "/v3/refund/domestic/refunds"
ANSWER_KEYS = [
    "amount", "channel", "create_time", "funds_account", "out_refund_no", "out_trade_no", "promotion_detail",
    "refund_id", "status", "transaction_id", "user_received_account",
]
AMOUNT_KEYS = [
    "currency", "discount_refund", "from", "payer_refund", "payer_total", "refund", "refund_fee",
    "settlement_refund", "settlement_total", "total",
]
EXCEEDS = "申请退款金额超过订单可退金额"
AMOUNTS_DIFFER = "订单金额或退款金额与之前请求不一致，请核实后再试"


async def _paid(wechat: Merchant, out_trade_no: str, total: int = 100) -> dict[str, Any]:
    assert (await wechat.place(out_trade_no, amount={"total": total})).status == 200
    assert (await wechat.pay(out_trade_no))[0] == 200
    return (await wechat.query(out_trade_no)).json()


def _body(out_trade_no: str, out_refund_no: str, refund: int, total: int = 100, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"out_trade_no": out_trade_no, "out_refund_no": out_refund_no,
                            "amount": {"refund": refund, "total": total, "currency": "CNY"}}
    body.update(extra)
    return {k: v for k, v in body.items() if v is not ...}


async def _apply(wechat: Merchant, body: dict[str, Any] | bytes) -> Answer:
    return await wechat.request("POST", REFUNDS_PATH, body)


async def _query(wechat: Merchant, out_refund_no: str) -> Answer:
    return await wechat.request("GET", f"{REFUNDS_PATH}/{out_refund_no}")


def _error(answer: Answer) -> tuple[int, str, str]:
    body = answer.json()
    return answer.status, body["code"], body["message"]


@pytest.fixture
async def slow(make_wechat: MakeWechat) -> Merchant:
    """Refunds take 30 s to complete."""
    return await make_wechat(faults=WechatFaults(refund_delay=30))


async def test_a_refund_is_processing_then_succeeds_after_the_delay(slow: Merchant) -> None:
    await _paid(slow, "T20261126000501")
    slow.clock.advance(60)
    accepted = await _apply(slow, _body("T20261126000501", "R20261126000501", 40))
    assert accepted.status == 200 and accepted.headers["Request-ID"].endswith("-0")
    refund = accepted.json()
    assert list(refund) == ANSWER_KEYS  # no success_time while PROCESSING; keys in alphabetical order
    assert (refund["status"], refund["create_time"]) == ("PROCESSING", "2026-11-26T12:01:00+08:00")
    assert refund["refund_id"].startswith("50") and len(refund["refund_id"]) == 29
    order = (await slow.query("T20261126000501")).json()
    assert (order["trade_state"], order["trade_state_desc"]) == ("REFUND", "转入退款")
    assert refund["transaction_id"] == order["transaction_id"]

    slow.clock.advance(29)
    assert (await _query(slow, "R20261126000501")).json() == refund
    slow.clock.advance(1)
    done = (await _query(slow, "R20261126000501")).json()
    assert (done["status"], done["success_time"]) == ("SUCCESS", "2026-11-26T12:01:30+08:00")
    assert list(done) == sorted([*ANSWER_KEYS, "success_time"])
    assert (await slow.query("T20261126000501")).json()["trade_state"] == "REFUND"


async def test_the_answer_carries_wechats_fields(wechat: Merchant) -> None:
    await _paid(wechat, "T20261126000502", 1000)
    answer = (await _apply(wechat, _body("T20261126000502", "R20261126000502", 300, 1000,
                                         funds_account="AVAILABLE", reason="商品已售完"))).json()
    assert list(answer["amount"]) == AMOUNT_KEYS
    assert answer["amount"] == {
        "currency": "CNY", "discount_refund": 0, "from": [], "payer_refund": 300, "payer_total": 1000,
        "refund": 300, "refund_fee": 2, "settlement_refund": 300, "settlement_total": 1000, "total": 1000}
    assert (answer["channel"], answer["funds_account"], answer["user_received_account"]) == (
        "ORIGINAL", "AVAILABLE", "支付用户零钱")
    assert (answer["out_trade_no"], answer["out_refund_no"], answer["promotion_detail"]) == (
        "T20261126000502", "R20261126000502", [])


async def test_partial_refunds_accumulate_up_to_the_paid_amount(wechat: Merchant) -> None:
    await _paid(wechat, "T20261126000503")
    assert (await _apply(wechat, _body("T20261126000503", "R20261126000503A", 30))).status == 200
    assert (await _apply(wechat, _body("T20261126000503", "R20261126000503B", 70))).status == 200
    over = await _apply(wechat, _body("T20261126000503", "R20261126000503C", 1))
    assert _error(over) == (400, "INVALID_REQUEST", EXCEEDS)
    assert wechat.app[LEDGER].get("T20261126000503", wechat.clock.now()).refunded_amount == 100


async def test_a_refund_past_the_total_exceeds_the_refundable_amount(wechat: Merchant) -> None:
    await _paid(wechat, "T20261126000504")
    assert _error(await _apply(wechat, _body("T20261126000504", "R20261126000504", 101))) == (
        400, "INVALID_REQUEST", EXCEEDS)
    assert (await _query(wechat, "R20261126000504")).status == 404  # nothing was accepted


async def test_the_same_request_again_is_the_same_refund(slow: Merchant) -> None:
    await _paid(slow, "T20261126000505")
    first = await _apply(slow, _body("T20261126000505", "R20261126000505", 50))
    again = await _apply(slow, _body("T20261126000505", "R20261126000505", 50))
    assert again.status == 200 and again.json() == first.json()
    slow.clock.advance(30)
    later = (await _apply(slow, _body("T20261126000505", "R20261126000505", 50))).json()
    assert (later["refund_id"], later["status"]) == (first.json()["refund_id"], "SUCCESS")
    order = slow.app[LEDGER].get("T20261126000505", slow.clock.now())
    assert len(order.refunds) == 1 and order.refunded_amount == 50


@pytest.mark.parametrize(("change", "message"), [
    ({"amount": {"refund": 51, "total": 100, "currency": "CNY"}}, AMOUNTS_DIFFER),
    ({"out_trade_no": "T20261126000599"}, "请求内容和上次请求不一致"),
    ({"reason": "another reason"}, "请求内容和上次请求不一致"),
    ({"notify_url": "https://pay.example.com/v1/wechat/refund-notify"}, "请求内容和上次请求不一致"),
])
async def test_the_same_out_refund_no_with_other_parameters_is_refused(
    wechat: Merchant, change: dict[str, Any], message: str
) -> None:
    await _paid(wechat, "T20261126000506")
    await _paid(wechat, "T20261126000599")
    assert (await _apply(wechat, _body("T20261126000506", "R20261126000506", 50))).status == 200
    status, code, text = _error(await _apply(wechat, {**_body("T20261126000506", "R20261126000506", 50),
                                                      **change}))
    assert (status, code) == (400, "INVALID_REQUEST") and text.startswith(message)
    assert wechat.app[LEDGER].get("T20261126000599", wechat.clock.now()).refunds == []


async def test_the_total_must_be_the_orders_total(wechat: Merchant) -> None:
    await _paid(wechat, "T20261126000507")
    assert _error(await _apply(wechat, _body("T20261126000507", "R20261126000507", 10, total=99))) == (
        400, "INVALID_REQUEST", AMOUNTS_DIFFER)


@pytest.mark.parametrize("setup", ["unknown", "unpaid", "closed"])
async def test_only_a_paid_order_refunds_else_404_resource_not_exists(wechat: Merchant, setup: str) -> None:
    if setup != "unknown":
        await wechat.place("T20261126000508")
    if setup == "closed":
        await wechat.close("T20261126000508")
    answer = await _apply(wechat, _body("T20261126000508", "R20261126000508", 10))
    assert _error(answer) == (404, "RESOURCE_NOT_EXISTS", "订单不存在")


async def test_an_unknown_refund_queries_404(wechat: Merchant) -> None:
    assert _error(await _query(wechat, "R20261126000509")) == (404, "RESOURCE_NOT_EXISTS", "退款单不存在")


async def test_a_refund_can_name_the_order_by_transaction_id(wechat: Merchant) -> None:
    order = await _paid(wechat, "T20261126000510")
    body = _body(..., "R20261126000510", 10, transaction_id=order["transaction_id"])
    answer = (await _apply(wechat, body)).json()
    assert answer["out_trade_no"] == "T20261126000510"
    await _paid(wechat, "T20261126000511")
    both = _body("T20261126000511", "R20261126000511", 10, transaction_id=order["transaction_id"])
    assert (await _apply(wechat, both)).status == 400


@pytest.mark.parametrize(("body", "field"), [
    (b"{", "/"),
    ({"out_refund_no": "R1", "amount": {"refund": 1, "total": 100, "currency": "CNY"}}, "/out_trade_no"),
    (_body("T20261126000512", ..., 1), "/out_refund_no"),
    (_body("T20261126000512", "R 1", 1), "/out_refund_no"),
    (_body("T20261126000512", "R" * 65, 1), "/out_refund_no"),
    (_body("T20261126000512", "R1", 0), "/amount/refund"),
    (_body("T20261126000512", "R1", 1, total=0), "/amount/total"),
    (_body("T20261126000512", "R1", 1, amount={"refund": "1", "total": 100, "currency": "CNY"}), "/amount/refund"),
    (_body("T20261126000512", "R1", 1, amount={"refund": 1, "total": 100}), "/amount/currency"),
    (_body("T20261126000512", "R1", 1, amount={"refund": 1, "total": 100, "currency": "USD"}),
     "/amount/currency"),
    (_body("T20261126000512", "R1", 1, amount=...), "/amount"),
    (_body("T20261126000512", "R1", 1, reason="x" * 81), "/reason"),
    (_body("T20261126000512", "R1", 1, notify_url="http://pay.example.com/n"), "/notify_url"),
    (_body("T20261126000512", "R1", 1, funds_account="BASIC"), "/funds_account"),
    (_body("T20261126000512", "R1", 1, goods_detail={"a": 1}), "/goods_detail"),
    (_body("T20261126000512", "R1", 1, reason=None), "/reason"),
])
async def test_a_bad_body_is_param_error_naming_the_field(wechat: Merchant, body: Any, field: str) -> None:
    await _paid(wechat, "T20261126000512")
    answer = await _apply(wechat, body)
    assert (answer.status, answer.json()["code"], answer.json()["detail"]["field"]) == (400, "PARAM_ERROR", field)
    assert wechat.app[LEDGER].get("T20261126000512", wechat.clock.now()).refunds == []


async def test_from_and_goods_detail_are_accepted(wechat: Merchant) -> None:
    await _paid(wechat, "T20261126000513")
    body = _body("T20261126000513", "R20261126000513", 10, amount={
        "refund": 10, "total": 100, "currency": "CNY", "from": [{"account": "AVAILABLE", "amount": 10}]},
        goods_detail=[{"merchant_goods_id": "G1", "unit_price": 10, "refund_amount": 10, "refund_quantity": 1}])
    assert (await _apply(wechat, body)).status == 200


async def test_a_share_of_refunds_end_abnormal_deterministically(make_wechat: MakeWechat) -> None:
    outcomes = []
    for _ in range(2):
        wechat = await make_wechat(faults=WechatFaults(refund_abnormal=0.5), seed=7)
        for i in range(20):
            await _paid(wechat, f"T2026112600{i:04d}")
            await _apply(wechat, _body(f"T2026112600{i:04d}", f"R{i}", 100))
        outcomes.append([(await _query(wechat, f"R{i}")).json()["status"] for i in range(20)])
    assert outcomes[0] == outcomes[1] and set(outcomes[0]) == {"SUCCESS", "ABNORMAL"}
    assert wechat.app[FAULTS].injected["refund_abnormal"] == outcomes[0].count("ABNORMAL")
    abnormal = (await _query(wechat, f"R{outcomes[0].index('ABNORMAL')}")).json()
    assert "success_time" not in abnormal


async def test_the_refund_delay_is_divided_by_the_time_factor(make_wechat: MakeWechat) -> None:
    wechat = await make_wechat(faults=WechatFaults(refund_delay=600), time_factor=60)
    await _paid(wechat, "T20261126000514")
    await _apply(wechat, _body("T20261126000514", "R20261126000514", 10))
    wechat.clock.advance(9.9)
    assert (await _query(wechat, "R20261126000514")).json()["status"] == "PROCESSING"
    wechat.clock.advance(0.1)
    assert (await _query(wechat, "R20261126000514")).json()["status"] == "SUCCESS"


async def test_a_closed_refund_gives_its_amount_back(slow: Merchant) -> None:
    await _paid(slow, "T20261126000515")
    await _apply(slow, _body("T20261126000515", "R20261126000515A", 100))
    status, view = await slow.control("POST", "/sim/v1/refunds/R20261126000515A/close")
    assert (status, view["status"], view["refunded_amount"]) == (200, "CLOSED", 0)
    slow.clock.advance(60)  # past its due time: a closed refund stays closed
    assert (await _query(slow, "R20261126000515A")).json()["status"] == "CLOSED"
    assert (await _apply(slow, _body("T20261126000515", "R20261126000515B", 100))).status == 200


async def test_an_order_refunds_at_most_fifty_times(wechat: Merchant) -> None:
    await _paid(wechat, "T20261126000516")
    for i in range(50):
        assert (await _apply(wechat, _body("T20261126000516", f"R{i}", 1))).status == 200
    status, code, _ = _error(await _apply(wechat, _body("T20261126000516", "R50", 1)))
    assert (status, code) == (400, "INVALID_REQUEST")


async def test_an_order_paid_over_a_year_ago_no_longer_refunds(wechat: Merchant) -> None:
    await _paid(wechat, "T20261126000517")
    wechat.clock.advance(dt.timedelta(days=365, seconds=1).total_seconds())
    status, code, message = _error(await _apply(wechat, _body("T20261126000517", "R20261126000517", 1)))
    assert (status, code, message) == (400, "INVALID_REQUEST", "订单已超过退款期限")


async def test_refund_calls_have_their_own_rate_limits(make_wechat: MakeWechat) -> None:
    wechat = await make_wechat(faults=WechatFaults(limit_refund=1, limit_refund_query=1))
    await _paid(wechat, "T20261126000518")
    assert (await _apply(wechat, _body("T20261126000518", "R1", 1))).status == 200
    assert _error(await _apply(wechat, _body("T20261126000518", "R2", 1)))[:2] == (429, "FREQUENCY_LIMITED")
    assert (await _query(wechat, "R1")).status == 200
    assert (await _query(wechat, "R1")).status == 429
    assert (await wechat.query("T20261126000518")).status == 200  # the order query is another API


async def test_an_answer_lost_after_the_refund_took_effect_is_recovered_by_reentry(wechat: Merchant) -> None:
    await _paid(wechat, "T20261126000519")
    wechat.app[FAULTS].plan = WechatFaults(api_500=1.0, api_500_applied=1.0)
    assert (await _apply(wechat, _body("T20261126000519", "R20261126000519", 10))).status == 500
    wechat.app[FAULTS].plan = WechatFaults()
    retry = await _apply(wechat, _body("T20261126000519", "R20261126000519", 10))
    assert retry.status == 200 and len(wechat.app[LEDGER].refunds()) == 1


# -- the merchant platform and operator actions (/sim/v1) -----------------------------------------

async def test_a_refund_made_outside_the_api_completes_like_any_other(slow: Merchant) -> None:
    await _paid(slow, "T20261126000520")
    status, view = await slow.control("POST", "/sim/v1/transactions/T20261126000520/refunds", {"amount": 25})
    assert status == 201 and (view["status"], view["via"], view["amount"], view["trade_state"]) == (
        "PROCESSING", "platform", 25, "REFUND")
    assert view["due"] == "2026-11-26T12:00:30+08:00" and view["out_refund_no"].startswith("RF")
    answer = (await _query(slow, view["out_refund_no"])).json()
    assert (answer["status"], answer["refund_id"]) == ("PROCESSING", view["refund_id"])
    slow.clock.advance(30)
    status, done = await slow.control("GET", f"/sim/v1/refunds/{view['out_refund_no']}")
    assert (status, done["status"], done["success_time"], done["due"]) == (
        200, "SUCCESS", "2026-11-26T12:00:30+08:00", None)
    status, listing = await slow.control("GET", "/sim/v1/refunds")
    assert [r["out_refund_no"] for r in listing["refunds"]] == [view["out_refund_no"]]
    status, order = await slow.control("GET", "/sim/v1/transactions/T20261126000520")
    assert order["refunds"][0]["status"] == "SUCCESS" and order["refunded_amount"] == 25


async def test_a_refund_outside_the_api_takes_what_is_left_by_default(wechat: Merchant) -> None:
    await _paid(wechat, "T20261126000521")
    await _apply(wechat, _body("T20261126000521", "R20261126000521", 40))
    status, view = await wechat.control("POST", "/sim/v1/transactions/T20261126000521/refunds",
                                        {"out_refund_no": "MANUAL-1", "reason": "客服退款"})
    assert (status, view["amount"], view["out_refund_no"]) == (201, 60, "MANUAL-1")
    over = await wechat.control("POST", "/sim/v1/transactions/T20261126000521/refunds", {"amount": 1})
    assert (over[0], over[1]["error"]["code"]) == (409, "INVALID_AMOUNT")
    again = await wechat.control("POST", "/sim/v1/transactions/T20261126000521/refunds",
                                 {"out_refund_no": "MANUAL-1"})
    assert (again[0], again[1]["error"]["code"]) == (409, "REFUND_NO_USED")


async def test_an_unpaid_order_does_not_refund_outside_the_api_either(wechat: Merchant) -> None:
    await wechat.place("T20261126000522")
    status, body = await wechat.control("POST", "/sim/v1/transactions/T20261126000522/refunds", {})
    assert (status, body["error"]["code"]) == (409, "NOT_PAID")
    status, body = await wechat.control("POST", "/sim/v1/transactions/T20261126000523/refunds", {})
    assert (status, body["error"]["code"]) == (409, "ORDER_NOT_EXIST")


async def test_only_a_processing_refund_can_be_marked_abnormal_and_closed_after(slow: Merchant) -> None:
    await _paid(slow, "T20261126000524")
    await _apply(slow, _body("T20261126000524", "R20261126000524", 10))
    status, view = await slow.control("POST", "/sim/v1/refunds/R20261126000524/abnormal")
    assert (status, view["status"], view["refunded_amount"]) == (200, "ABNORMAL", 10)
    again = await slow.control("POST", "/sim/v1/refunds/R20261126000524/abnormal")
    assert (again[0], again[1]["error"]["code"]) == (409, "REFUND_FINISHED")
    assert (await slow.control("POST", "/sim/v1/refunds/R20261126000524/close"))[1]["status"] == "CLOSED"
    closed = await slow.control("POST", "/sim/v1/refunds/R20261126000524/close")
    assert (closed[0], closed[1]["error"]["code"]) == (409, "REFUND_FINISHED")


async def test_a_succeeded_refund_cannot_be_closed(wechat: Merchant) -> None:
    await _paid(wechat, "T20261126000525")
    await _apply(wechat, _body("T20261126000525", "R20261126000525", 10))
    status, body = await wechat.control("POST", "/sim/v1/refunds/R20261126000525/close")
    assert (status, body["error"]["code"]) == (409, "REFUND_FINISHED")  # delay 0: it succeeded at once


async def test_an_unknown_refund_is_404_on_control_reads_and_409_on_actions(wechat: Merchant) -> None:
    status, body = await wechat.control("GET", "/sim/v1/refunds/NOPE")
    assert (status, body["error"]["code"]) == (404, "REFUND_NOT_EXIST")
    status, body = await wechat.control("POST", "/sim/v1/refunds/NOPE/close")
    assert (status, body["error"]["code"]) == (409, "REFUND_NOT_EXIST")


async def test_the_legacy_instant_refund_is_a_succeeded_refund(wechat: Merchant) -> None:
    await _paid(wechat, "T20261126000526")
    status, _ = await wechat.control("POST", "/sim/v1/transactions/T20261126000526/refund",
                                     {"amount": 10, "out_refund_no": "INSTANT-1"})
    assert status == 200
    answer = (await _query(wechat, "INSTANT-1")).json()
    assert (answer["status"], answer["success_time"]) == ("SUCCESS", "2026-11-26T12:00:00+08:00")


# -- the fault plan -------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "field"), [
    ({"refund_delay": -1}, "refund_delay"), ({"refund_abnormal": 1.5}, "refund_abnormal"),
    ({"refund_abnormal": True}, "refund_abnormal"), ({"limit_refund": -1}, "limit_refund"),
])
async def test_a_bad_refund_fault_field_is_400(wechat: Merchant, body: dict[str, Any], field: str) -> None:
    status, answer = await wechat.control("PUT", "/sim/v1/faults", body)
    assert (status, answer["error"]["code"]) == (400, "INVALID_FAULT_PLAN") and field in answer["error"]["message"]


def test_refund_outcomes_have_a_stream_of_their_own() -> None:
    plan = WechatFaults(refund_abnormal=0.5, drop_first=0.5, api_500=0.5)
    a, b = FaultDice(plan, seed=5), FaultDice(plan, seed=5)
    for _ in range(10):
        b.api(), b.send(first=True), b.queued()  # other traffic does not shift how refunds turn out
    assert [a.refund() for _ in range(40)] == [b.refund() for _ in range(40)]
    assert {a.refund().abnormal for _ in range(40)} == {True, False}
    assert FaultDice(WechatFaults(refund_delay=7)).refund().delay == 7


async def test_advance_completes_due_refunds_in_due_order(make_wechat: MakeWechat) -> None:
    wechat = await make_wechat(faults=WechatFaults(refund_delay=10))
    await _paid(wechat, "T20261126000527")
    await _apply(wechat, _body("T20261126000527", "R-A", 10))
    wechat.clock.advance(5)
    await _apply(wechat, _body("T20261126000527", "R-B", 10))
    desk = wechat.app[REFUNDS]
    assert desk.next_due() == T0 + dt.timedelta(seconds=10)
    wechat.clock.advance(10)
    assert [r.out_refund_no for r in desk.advance(wechat.clock.now())] == ["R-A", "R-B"]
    assert desk.next_due() is None and desk.advance(wechat.clock.now()) == []
