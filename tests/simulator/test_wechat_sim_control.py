"""WeChat simulator control endpoints (/sim/v1, DESIGN §6.6) and the fault plan's JSON and CLI forms."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from simulator.wechat import FAULTS, NOTIFIER, faults
from simulator.wechat.faults import FaultDice, WechatFaults
from tests.simulator.conftest import Merchant, Receiver

VIEW_KEYS = {
    "out_trade_no", "trade_state", "amount", "paid_amount", "refunded_amount", "transaction_id",
    "success_time", "time_expire", "prepay_id", "placed", "notify_url", "refunds", "notifications",
}
NOTIFICATION_KEYS = {
    "id", "state", "attempts", "next_attempt_at", "sent", "dropped", "acked", "failed", "duplicates",
    "probes", "probes_acked", "forged_acked",
}


async def test_paying_returns_the_order_and_queues_its_notification(
    wechat: Merchant, receiver: Receiver
) -> None:
    await wechat.place("T20261126000301", notify_url=receiver.url)
    status, view = await wechat.pay("T20261126000301")
    assert status == 200 and set(view) == VIEW_KEYS and set(view["notifications"]) == NOTIFICATION_KEYS
    assert (view["trade_state"], view["paid_amount"], view["placed"]) == ("SUCCESS", 100, True)
    assert view["success_time"] == "2026-11-26T12:00:00+08:00" and view["transaction_id"].startswith("4200")
    assert view["notifications"]["state"] == "pending" and view["notifications"]["sent"] == 0
    await wechat.app[NOTIFIER].deliver_due(wechat.clock.now())
    status, listing = await wechat.control("GET", "/sim/v1/transactions")
    [entry] = listing["transactions"]
    assert (entry["notifications"]["sent"], entry["notifications"]["acked"]) == (1, 1)
    assert entry["notify_url"] == receiver.url


async def test_paying_another_amount_is_what_wechat_reports(wechat: Merchant) -> None:
    await wechat.place("T20261126000302")
    status, view = await wechat.pay("T20261126000302", amount=1)
    assert status == 200 and (view["amount"], view["paid_amount"]) == (100, 1)
    amount = (await wechat.query("T20261126000302")).json()["amount"]
    assert (amount["total"], amount["payer_total"]) == (1, 1)


@pytest.mark.parametrize(("setup", "code"), [
    ("none", "ORDER_NOT_EXIST"), ("paid", "ORDER_PAID"), ("closed", "ORDER_CLOSED"),
    ("expired", "ORDER_EXPIRED")])
async def test_paying_an_order_that_cannot_be_paid_is_409(wechat: Merchant, setup: str, code: str) -> None:
    if setup != "none":
        await wechat.place("T20261126000303", time_expire="2026-11-26T12:05:00+08:00")
    if setup == "paid":
        await wechat.pay("T20261126000303")
    elif setup == "closed":
        await wechat.close("T20261126000303")
    elif setup == "expired":
        wechat.clock.advance(300)
    status, body = await wechat.pay("T20261126000303")
    assert (status, body["error"]["code"]) == (409, code)


@pytest.mark.parametrize("body", [{"amount": 0}, {"amount": "5"}, {"amount": True}, [1]])
async def test_a_bad_pay_body_is_400(wechat: Merchant, body: Any) -> None:
    await wechat.place("T20261126000304")
    status, answer = await wechat.control("POST", "/sim/v1/transactions/T20261126000304/pay", body)
    assert (status, answer["error"]["code"]) == (400, "INVALID_INPUT")
    assert (await wechat.query("T20261126000304")).json()["trade_state"] == "NOTPAY"


async def test_refunds_accumulate_up_to_the_paid_amount(wechat: Merchant) -> None:
    await wechat.place("T20261126000305")
    unpaid = await wechat.control("POST", "/sim/v1/transactions/T20261126000305/refund", {})
    assert (unpaid[0], unpaid[1]["error"]["code"]) == (409, "NOT_PAID")
    await wechat.pay("T20261126000305")
    path = "/sim/v1/transactions/T20261126000305/refund"
    assert (await wechat.control("POST", path, {"amount": 30}))[0] == 200
    status, view = await wechat.control("POST", path, {})
    assert (status, view["refunded_amount"], [r["amount"] for r in view["refunds"]]) == (200, 100, [30, 70])
    over = await wechat.control("POST", "/sim/v1/transactions/T20261126000305/refund", {"amount": 1})
    assert (over[0], over[1]["error"]["code"]) == (409, "INVALID_AMOUNT")


async def test_an_order_payflow_never_placed_can_be_recorded_paid(wechat: Merchant) -> None:
    status, view = await wechat.control("POST", "/sim/v1/transactions",
                                        {"out_trade_no": "X20261126000306", "amount": 250, "paid": True})
    assert status == 201
    assert (view["trade_state"], view["placed"], view["notify_url"], view["paid_amount"]) == (
        "SUCCESS", False, None, 250)
    assert view["notifications"]["state"] == "none" and wechat.app[NOTIFIER].notifications() == []
    assert (await wechat.query("X20261126000306")).json()["trade_state"] == "SUCCESS"
    again = await wechat.control("POST", "/sim/v1/transactions",
                                 {"out_trade_no": "X20261126000306", "amount": 250, "paid": True})
    assert (again[0], again[1]["error"]["code"]) == (409, "ORDER_EXISTS")
    placed = await wechat.place("X20261126000306")
    assert (placed.status, placed.json()["code"]) == (400, "ORDERPAID")


@pytest.mark.parametrize("body", [
    {"out_trade_no": "X1", "amount": 1}, {"out_trade_no": "X1", "amount": 1, "paid": False},
    {"amount": 1, "paid": True}, {"out_trade_no": "X1", "paid": True},
    {"out_trade_no": "X1", "amount": 1, "paid": True, "success_time": "yesterday"}])
async def test_recording_validates_its_body(wechat: Merchant, body: dict[str, Any]) -> None:
    status, answer = await wechat.control("POST", "/sim/v1/transactions", body)
    assert (status, answer["error"]["code"]) == (400, "INVALID_INPUT")


async def test_one_transaction_can_be_read_and_an_unknown_one_is_404(wechat: Merchant) -> None:
    await wechat.place("T20261126000307")
    status, view = await wechat.control("GET", "/sim/v1/transactions/T20261126000307")
    assert status == 200 and view["trade_state"] == "NOTPAY" and view["prepay_id"].startswith("wx")
    status, body = await wechat.control("GET", "/sim/v1/transactions/T20261126000308")
    assert (status, body["error"]["code"]) == (404, "ORDER_NOT_EXIST")


async def test_the_fault_plan_is_read_and_replaced(wechat: Merchant) -> None:
    assert await wechat.control("GET", "/sim/v1/faults") == (200, WechatFaults().to_json())
    status, plan = await wechat.control("PUT", "/sim/v1/faults", {"drop_first": 0.5, "api_latency_max": 0.1})
    assert status == 200 and plan["drop_first"] == 0.5 and plan["drop_retry"] == 0.0
    assert wechat.app[FAULTS].plan == WechatFaults(drop_first=0.5, api_latency_max=0.1)
    assert (await wechat.control("GET", "/sim/v1/faults"))[1] == plan


@pytest.mark.parametrize(("body", "field"), [
    ({"drop_first": 1.5}, "drop_first"), ({"bogus": 0.1}, "bogus"), ({"probe": "0.1"}, "probe"),
    ({"duplicate": True}, "duplicate"), ({"delay_min": 2, "delay_max": 1}, "delay_min"),
    ({"api_500": 0.7, "api_429": 0.7}, "api_500"), ({"api_latency_min": -1}, "api_latency_min"),
    ([], "object")])
async def test_a_bad_fault_plan_is_400_naming_the_field_and_changes_nothing(
    wechat: Merchant, body: Any, field: str
) -> None:
    status, answer = await wechat.control("PUT", "/sim/v1/faults", body)
    assert (status, answer["error"]["code"]) == (400, "INVALID_FAULT_PLAN")
    assert field in answer["error"]["message"]
    assert wechat.app[FAULTS].plan == WechatFaults()


# -- the plan itself ------------------------------------------------------------------------------

def test_the_default_plan_is_no_faults_and_round_trips() -> None:
    plan = WechatFaults()
    assert all(value == 0.0 for value in plan.to_json().values())
    busy = WechatFaults(drop_first=0.1, never_deliver=0.01, delay_min=1, delay_max=2, api_429=0.2)
    assert WechatFaults.from_json(busy.to_json()) == busy
    assert WechatFaults.from_json(json.dumps(busy.to_json())) == busy


@pytest.mark.parametrize(("data", "field"), [
    ('{"drop_retry": -0.1}', "drop_retry"), ("{nope", "JSON"), ('{"reorder": null}', "reorder"),
    ('{"corrupt_signature": NaN}', "corrupt_signature"), ('{"delay_max": Infinity}', "delay_max"),
    ('{"never_deliver": 0.1, "x": 1}', "x")])
def test_from_json_is_strict(data: str, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        WechatFaults.from_json(data)


def test_cli_flags_mirror_the_fields() -> None:
    parser = argparse.ArgumentParser()
    faults.add_arguments(parser)
    args = parser.parse_args(["--drop-first", "0.3", "--api-500", "0.05", "--delay-max", "9"])
    plan = faults.from_args(args)
    assert plan == WechatFaults(drop_first=0.3, api_500=0.05, delay_max=9)
    assert faults.from_args(parser.parse_args([])) == WechatFaults()
    for name in WechatFaults().to_json():
        assert f"--{name.replace('_', '-')}" in parser.format_help()
    with pytest.raises(ValueError, match="probe"):
        faults.from_args(parser.parse_args(["--probe", "2"]))


def test_the_dice_replay_from_the_seed_and_keep_api_and_notification_streams_apart() -> None:
    plan = WechatFaults(drop_first=0.5, api_500=0.5)
    a, b = FaultDice(plan, seed=3), FaultDice(plan, seed=3)
    for _ in range(10):
        b.api()  # API traffic on one simulator must not shift its notification decisions
    assert [a.send(first=True) for _ in range(50)] == [b.send(first=True) for _ in range(50)]
    assert [a.api() for _ in range(50)] != [FaultDice(plan, seed=4).api() for _ in range(50)]
    # Rolls draw the same amount whatever the plan, so a plan change never shifts later decisions.
    quiet, busy = FaultDice(WechatFaults(), seed=3), FaultDice(WechatFaults(probe=1.0, delay_max=5), seed=3)
    for dice in (quiet, busy):
        dice.queued(), dice.send(first=True), dice.api()
        dice.plan = plan
    assert [quiet.send(first=False) for _ in range(20)] == [busy.send(first=False) for _ in range(20)]
