"""WeChat simulator refund notifications (REFUND.SUCCESS / ABNORMAL / CLOSED through the payment notifier and
its fault plan) and refund lines in the ALL, SUCCESS and REFUND trade bills (docs/wechatpay-refunds.md)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from aiohttp import web

from payflow.clock import SystemClock
from payflow.wechat import crypto
from simulator.wechat import FAULTS, NOTIFIER
from simulator.wechat.faults import WechatFaults
from simulator.wechat.notifier import RETRY_SCHEDULE
from tests.simulator.conftest import MakeWechat, Merchant, Post, Receiver
from tests.simulator.test_wechat_sim_bills import _bill, _rows
from tests.simulator.test_wechat_sim_refunds import _apply, _body, _paid

RESOURCE_KEYS = ["mchid", "out_trade_no", "transaction_id", "out_refund_no", "refund_id", "refund_status",
                 "success_time", "amount", "user_received_account"]


async def _paid_to(wechat: Merchant, receiver: Receiver, out_trade_no: str, total: int = 100) -> None:
    assert (await wechat.place(out_trade_no, notify_url=receiver.url, amount={"total": total})).status == 200
    assert (await wechat.pay(out_trade_no))[0] == 200
    await wechat.app[NOTIFIER].deliver_due(wechat.clock.now())  # the payment's own notification, out of the way
    receiver.posts.clear()


async def _deliver(wechat: Merchant) -> int:
    return await wechat.app[NOTIFIER].deliver_due(wechat.clock.now())


def _open(wechat: Merchant, post: Post) -> tuple[dict[str, Any], dict[str, Any]]:
    platform = {wechat.keys.pub_key_id: wechat.keys.platform_public_key}
    crypto.verify_signed_message(post.headers, post.body, platform, now=wechat.clock.now().timestamp())
    envelope = json.loads(post.body)
    resource = envelope["resource"]
    plain = crypto.aead_decrypt(wechat.keys.apiv3_key, resource["nonce"], resource["associated_data"],
                                resource["ciphertext"])
    return envelope, json.loads(plain)


@pytest.fixture
async def slow(make_wechat: MakeWechat) -> Merchant:
    return await make_wechat(faults=WechatFaults(refund_delay=30))


async def test_a_succeeded_refund_is_notified_encrypted_with_aad_refund(slow: Merchant, receiver: Receiver) -> None:
    await _paid_to(slow, receiver, "T20261126000601", 1000)
    refund = (await _apply(slow, _body("T20261126000601", "R20261126000601", 300, 1000))).json()
    assert await _deliver(slow) == 0  # PROCESSING: nothing to say yet
    slow.clock.advance(30)
    assert await _deliver(slow) == 1  # the notifier's own pass completes the refund: nobody had to query
    [post] = receiver.posts
    envelope, plain = _open(slow, post)
    assert list(envelope) == ["id", "create_time", "resource_type", "event_type", "summary", "resource"]
    assert uuid.UUID(envelope["id"]) and envelope["create_time"] == "2026-11-26T12:00:30+08:00"
    assert (envelope["resource_type"], envelope["event_type"], envelope["summary"]) == (
        "encrypt-resource", "REFUND.SUCCESS", "退款成功")
    resource = envelope["resource"]
    assert list(resource) == ["original_type", "algorithm", "ciphertext", "associated_data", "nonce"]
    assert (resource["original_type"], resource["algorithm"], resource["associated_data"]) == (
        "refund", "AEAD_AES_256_GCM", "refund")
    assert list(plain) == RESOURCE_KEYS
    order = (await slow.query("T20261126000601")).json()
    assert plain == {
        "mchid": slow.keys.mchid, "out_trade_no": "T20261126000601", "transaction_id": order["transaction_id"],
        "out_refund_no": "R20261126000601", "refund_id": refund["refund_id"], "refund_status": "SUCCESS",
        "success_time": "2026-11-26T12:00:30+08:00",
        "amount": {"total": 1000, "refund": 300, "payer_total": 1000, "payer_refund": 300},
        "user_received_account": "支付用户零钱"}
    [notification] = slow.app[NOTIFIER].refund_notifications("R20261126000601")
    assert (notification.state, notification.out_trade_no, notification.event_type) == (
        "acked", "T20261126000601", "REFUND.SUCCESS")
    assert await _deliver(slow) == 0


async def test_the_refunds_notify_url_wins_over_the_orders(
    wechat: Merchant, receiver: Receiver, aiohttp_server: Any
) -> None:
    await _paid_to(wechat, receiver, "T20261126000602")
    other = Receiver(wechat.keys)
    app = web.Application()
    app.router.add_post("/notify", other.handle)
    other.server = await aiohttp_server(app)
    await _apply(wechat, _body("T20261126000602", "R20261126000602A", 10, notify_url=other.url))
    await _apply(wechat, _body("T20261126000602", "R20261126000602B", 10))
    assert await _deliver(wechat) == 2
    assert [_open(wechat, p)[1]["out_refund_no"] for p in other.posts] == ["R20261126000602A"]
    assert [_open(wechat, p)[1]["out_refund_no"] for p in receiver.posts] == ["R20261126000602B"]


async def test_abnormal_then_closed_is_notified_twice_without_success_time(
    slow: Merchant, receiver: Receiver
) -> None:
    await _paid_to(slow, receiver, "T20261126000603")
    await _apply(slow, _body("T20261126000603", "R20261126000603", 10))
    await slow.control("POST", "/sim/v1/refunds/R20261126000603/abnormal")
    slow.clock.advance(5)
    status, view = await slow.control("POST", "/sim/v1/refunds/R20261126000603/close")
    assert status == 200 and [n["event_type"] for n in view["notifications"]] == ["REFUND.ABNORMAL", "REFUND.CLOSED"]
    assert await _deliver(slow) == 2
    opened = [_open(slow, post) for post in receiver.posts]
    assert [(e["event_type"], e["summary"], p["refund_status"]) for e, p in opened] == [
        ("REFUND.ABNORMAL", "退款异常", "ABNORMAL"), ("REFUND.CLOSED", "退款关闭", "CLOSED")]
    assert all("success_time" not in p for _, p in opened)
    assert opened[0][0]["id"] != opened[1][0]["id"]
    slow.clock.advance(60)
    assert await _deliver(slow) == 0  # the refund's original due time passed: nothing more happens


async def test_an_abnormal_share_is_notified_abnormal(make_wechat: MakeWechat, receiver: Receiver) -> None:
    wechat = await make_wechat(faults=WechatFaults(refund_abnormal=1.0))
    await _paid_to(wechat, receiver, "T20261126000604")
    await _apply(wechat, _body("T20261126000604", "R20261126000604", 10))
    assert await _deliver(wechat) == 1
    envelope, plain = _open(wechat, receiver.posts[0])
    assert (envelope["event_type"], plain["refund_status"]) == ("REFUND.ABNORMAL", "ABNORMAL")


async def test_a_refund_outside_the_api_notifies_the_orders_notify_url(
    wechat: Merchant, receiver: Receiver
) -> None:
    await _paid_to(wechat, receiver, "T20261126000605")
    status, view = await wechat.control("POST", "/sim/v1/transactions/T20261126000605/refunds", {"amount": 5})
    assert status == 201 and view["notify_url"] == receiver.url
    assert await _deliver(wechat) == 1
    assert _open(wechat, receiver.posts[0])[1]["out_refund_no"] == view["out_refund_no"]


async def test_refund_notifications_are_retried_on_wechats_schedule(wechat: Merchant, receiver: Receiver) -> None:
    await _paid_to(wechat, receiver, "T20261126000606")
    receiver.statuses = [500, 500]
    await _apply(wechat, _body("T20261126000606", "R20261126000606", 10))
    assert await _deliver(wechat) == 1
    for interval in RETRY_SCHEDULE[:2]:
        wechat.clock.advance(interval - 1)
        assert await _deliver(wechat) == 0
        wechat.clock.advance(1)
        assert await _deliver(wechat) == 1
    [notification] = wechat.app[NOTIFIER].refund_notifications("R20261126000606")
    assert (notification.state, notification.attempts, len(receiver.posts)) == ("acked", 3, 3)


async def test_refund_notifications_follow_the_fault_plan(wechat: Merchant, receiver: Receiver) -> None:
    await _paid_to(wechat, receiver, "T20261126000607")
    wechat.app[FAULTS].plan = WechatFaults(drop_first=1.0, duplicate=1.0, probe=1.0)
    receiver.verify_now = lambda: wechat.clock.now().timestamp()
    await _apply(wechat, _body("T20261126000607", "R20261126000607", 10))
    assert await _deliver(wechat) == 1 and receiver.posts == []  # the first send is dropped
    wechat.clock.advance(RETRY_SCHEDULE[0])
    assert await _deliver(wechat) == 1
    assert [post.probe for post in receiver.posts] == [True, False, False]  # a probe, then a duplicate pair
    [notification] = wechat.app[NOTIFIER].refund_notifications("R20261126000607")
    stats = notification.to_json()
    assert (stats["state"], stats["dropped"], stats["duplicates"], stats["probes_acked"]) == ("acked", 1, 1, 0)


async def test_refunds_without_a_notify_url_are_not_notified(wechat: Merchant) -> None:
    status, _ = await wechat.control("POST", "/sim/v1/transactions",
                                     {"out_trade_no": "X20261126000608", "amount": 50, "paid": True})
    assert status == 201
    status, view = await wechat.control("POST", "/sim/v1/transactions/X20261126000608/refunds", {})
    assert status == 201 and view["notify_url"] is None
    assert await _deliver(wechat) == 0 and wechat.app[NOTIFIER].notifications() == []


async def test_the_background_loop_completes_and_notifies_a_refund_unasked(
    make_wechat: MakeWechat, receiver: Receiver
) -> None:
    wechat = await make_wechat(notify=True, clock=SystemClock(), faults=WechatFaults(refund_delay=0.05))
    assert (await wechat.place("T20261126000609", notify_url=receiver.url)).status == 200
    await wechat.pay("T20261126000609")
    await asyncio.wait_for(receiver.arrived.wait(), 5)
    receiver.arrived.clear()
    await _apply(wechat, _body("T20261126000609", "R20261126000609", 10))
    await asyncio.wait_for(receiver.arrived.wait(), 5)
    assert json.loads(receiver.posts[-1].body)["event_type"] == "REFUND.SUCCESS"


# -- bills ----------------------------------------------------------------------------------------

async def test_refund_lines_in_the_all_bill_show_each_refunds_status(slow: Merchant) -> None:
    await _paid(slow, "T20261126000611", 1000)
    slow.clock.advance(60)
    succeeded = (await _apply(slow, _body("T20261126000611", "R-OK", 300, 1000))).json()
    slow.clock.advance(30)
    await _apply(slow, _body("T20261126000611", "R-SLOW", 200, 1000))
    await _apply(slow, _body("T20261126000611", "R-GONE", 100, 1000))
    await slow.control("POST", "/sim/v1/refunds/R-GONE/close")
    rows = _rows((await _bill(slow, "2026-11-26"))[1])
    assert len(rows) == 6 and all(len(row) == 27 for row in rows[:4])
    payment, ok, slow_row = rows[1:4]
    assert payment[9] == "`SUCCESS" and payment[0] == "`2026-11-26 12:00:00"
    assert [f[1:] for f in ok[9:20]] == ["REFUND", "OTHERS", "CNY", "0.00", "0.00", succeeded["refund_id"], "R-OK",
                                         "3.00", "0.00", "ORIGINAL", "SUCCESS"]
    assert ok[0] == "`2026-11-26 12:01:00" and ok[22] == "`-0.02000" and ok[24:26] == ["`0.00", "`3.00"]
    assert (slow_row[15], slow_row[19]) == ("`R-SLOW", "`PROCESSING")  # a closed refund is not listed
    assert rows[5] == ["`3", "`10.00", "`5.00", "`0.00", "`0.03000", "`10.00", "`5.00"]


async def test_the_refund_bill_has_the_refund_times_and_the_payments_time(slow: Merchant) -> None:
    await _paid(slow, "T20261126000612", 500)
    slow.clock.advance(3600)
    applied = (await _apply(slow, _body("T20261126000612", "R20261126000612A", 100, 500))).json()
    await _apply(slow, _body("T20261126000612", "R20261126000612B", 50, 500))
    slow.clock.advance(30)
    await _apply(slow, _body("T20261126000612", "R20261126000612C", 50, 500))
    info = (await slow.request("GET", "/v3/bill/tradebill?bill_date=2026-11-26&bill_type=REFUND")).json()
    path = info["download_url"][len(str(slow.client.make_url("")).rstrip("/")):]
    rows = _rows((await slow.request("GET", path, verify=False)).body)
    assert rows[0][14:16] == ["退款申请时间", "退款成功时间"] and len(rows[0]) == 29
    assert all(len(row) == 29 for row in rows[1:4]) and rows[4][0] == "总交易单数"
    first, _, last = rows[1:4]
    assert first[0] == "`2026-11-26 12:00:00" and first[9] == "`REFUND"  # 交易时间: the payment's
    assert first[14:16] == ["`2026-11-26 13:00:00", "`2026-11-26 13:00:30"]
    assert [f[1:] for f in first[16:22]] == [applied["refund_id"], "R20261126000612A", "1.00", "0.00",
                                             "ORIGINAL", "SUCCESS"]
    assert last[14:16] == ["`2026-11-26 13:00:30", "`"] and last[21] == "`PROCESSING"
    assert rows[5] == ["`3", "`0.00", "`2.00", "`0.00", "`-0.01000", "`0.00", "`2.00"]


async def test_the_success_bill_has_twenty_columns_and_no_refunds(wechat: Merchant) -> None:
    await _paid(wechat, "T20261126000613", 1234)
    await _apply(wechat, _body("T20261126000613", "R20261126000613", 34, 1234))
    info = (await wechat.request("GET", "/v3/bill/tradebill?bill_date=2026-11-26&bill_type=SUCCESS")).json()
    path = info["download_url"][len(str(wechat.client.make_url("")).rstrip("/")):]
    rows = _rows((await wechat.request("GET", path, verify=False)).body)
    assert rows[0][12:] == ["应结订单金额", "代金券金额", "商品名称", "商户数据包", "手续费", "费率", "订单金额",
                            "费率备注"]
    assert len(rows) == 4 and len(rows[1]) == 20 and rows[1][9] == "`SUCCESS"
    assert [f[1:] for f in rows[1][12:]] == ["12.34", "0.00", "Image形象店-深圳腾大-QQ公仔", "", "0.07000",
                                             "0.60%", "12.34", ""]
    assert rows[3] == ["`1", "`12.34", "`0.00", "`0.00", "`0.07000", "`12.34", "`0.00"]


async def test_a_refund_is_on_the_bill_of_the_day_it_was_applied_for(slow: Merchant) -> None:
    await _paid(slow, "T20261126000614")
    slow.clock.advance(11 * 3600 + 59 * 60 + 50)  # 23:59:50 in Shanghai: it succeeds after midnight
    await _apply(slow, _body("T20261126000614", "R20261126000614", 10))
    slow.clock.advance(30)
    day1, day2 = _rows((await _bill(slow, "2026-11-26"))[1]), _rows((await _bill(slow, "2026-11-27"))[1])
    assert [(row[9], row[19]) for row in day1[1:-2]] == [("`SUCCESS", "`"), ("`REFUND", "`SUCCESS")]
    assert day2[1:-2] == []
