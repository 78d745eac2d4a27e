"""WeChat simulator notifications: envelope, encryption, signature, ack rules, the retry schedule on a
FakeClock, and the seeded notification faults (WECHATPAY_V3.md §2.5, §6)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import datetime as dt
import json
import uuid
from typing import Any

import aiohttp
import pytest

from payflow.clock import FakeClock, SystemClock
from payflow.wechat import crypto
from simulator.wechat import NOTIFIER
from simulator.wechat.faults import FaultDice, WechatFaults
from simulator.wechat.ledger import JsapiRequest, Ledger
from simulator.wechat.notifier import ACK_TIMEOUT, RETRY_SCHEDULE, Notifier
from tests.simulator.conftest import T0, MakeWechat, Merchant, Receiver


async def _paid(wechat: Merchant, receiver: Receiver, out_trade_no: str, **order: Any) -> None:
    assert (await wechat.place(out_trade_no, notify_url=receiver.url, **order)).status == 200
    assert (await wechat.pay(out_trade_no))[0] == 200


async def _deliver(wechat: Merchant) -> int:
    return await wechat.app[NOTIFIER].deliver_due(wechat.clock.now())


def _stats(wechat: Merchant, out_trade_no: str) -> dict[str, Any]:
    notification = wechat.app[NOTIFIER].get(out_trade_no)
    assert notification is not None
    return notification.to_json()


async def test_a_payment_is_notified_encrypted_and_signed(wechat: Merchant, receiver: Receiver) -> None:
    await _paid(wechat, receiver, "T20261126000201", attach="cart-201")
    assert receiver.posts == []  # notify=False: nothing moves until deliver_due
    assert await _deliver(wechat) == 1
    [post] = receiver.posts
    platform = {wechat.keys.pub_key_id: wechat.keys.platform_public_key}
    crypto.verify_signed_message(post.headers, post.body, platform, now=wechat.clock.now().timestamp())
    assert post.headers["Wechatpay-Signature-Type"] == "WECHATPAY2-SHA256-RSA2048"
    assert post.headers["Wechatpay-Timestamp"] == str(int(T0.timestamp()))
    assert post.headers["Content-Type"] == "application/json"
    envelope = json.loads(post.body)
    assert list(envelope) == ["id", "create_time", "resource_type", "event_type", "summary", "resource"]
    assert uuid.UUID(envelope["id"]) and envelope["create_time"] == "2026-11-26T12:00:00+08:00"
    assert (envelope["resource_type"], envelope["event_type"], envelope["summary"]) == (
        "encrypt-resource", "TRANSACTION.SUCCESS", "支付成功")
    resource = envelope["resource"]
    assert list(resource) == ["original_type", "algorithm", "ciphertext", "associated_data", "nonce"]
    assert (resource["original_type"], resource["algorithm"], resource["associated_data"]) == (
        "transaction", "AEAD_AES_256_GCM", "transaction")
    assert len(resource["nonce"]) == 12
    plain = crypto.aead_decrypt(wechat.keys.apiv3_key, resource["nonce"], "transaction",
                                resource["ciphertext"])
    transaction = json.loads(plain)
    assert transaction == (await wechat.query("T20261126000201")).json()
    assert transaction["attach"] == "cart-201" and transaction["trade_state"] == "SUCCESS"
    assert _stats(wechat, "T20261126000201") | {"id": None} == {
        "id": None, "state": "acked", "attempts": 1, "next_attempt_at": None, "sent": 1, "dropped": 0,
        "acked": 1, "failed": 0, "duplicates": 0, "probes": 0, "probes_acked": 0, "forged_acked": 0}
    assert await _deliver(wechat) == 0


async def test_failures_are_retried_on_wechats_schedule_then_given_up(
    wechat: Merchant, receiver: Receiver
) -> None:
    receiver.default = 500
    await _paid(wechat, receiver, "T20261126000202")
    assert await _deliver(wechat) == 1
    for interval in RETRY_SCHEDULE:
        wechat.clock.advance(interval - 1)
        assert await _deliver(wechat) == 0
        wechat.clock.advance(1)
        assert await _deliver(wechat) == 1
    assert wechat.clock.now() - T0 == dt.timedelta(hours=24, minutes=4)
    assert len(receiver.posts) == 16
    assert len({json.loads(post.body)["id"] for post in receiver.posts}) == 1
    assert len({post.body for post in receiver.posts}) == 1  # the same notification, re-signed each time
    stamps = [int(post.headers["Wechatpay-Timestamp"]) for post in receiver.posts]
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] == 24 * 3600 + 4 * 60
    assert _stats(wechat, "T20261126000202")["state"] == "exhausted"
    assert _stats(wechat, "T20261126000202")["failed"] == 16
    wechat.clock.advance(10**6)
    assert await _deliver(wechat) == 0


async def test_a_late_ack_ends_the_retries(wechat: Merchant, receiver: Receiver) -> None:
    receiver.statuses = [500, 503, 200]
    await _paid(wechat, receiver, "T20261126000203")
    for step in (0, 15, 15, 30):
        wechat.clock.advance(step)
        await _deliver(wechat)
    assert len(receiver.posts) == 3
    stats = _stats(wechat, "T20261126000203")
    assert (stats["state"], stats["attempts"], stats["failed"], stats["acked"]) == ("acked", 3, 2, 1)


async def test_time_factor_divides_the_schedule(make_wechat: MakeWechat, receiver: Receiver) -> None:
    wechat = await make_wechat(time_factor=60)
    receiver.default = 500
    await _paid(wechat, receiver, "T20261126000204")
    await _deliver(wechat)
    wechat.clock.advance(0.24)
    assert await _deliver(wechat) == 0
    wechat.clock.advance(0.01)
    assert await _deliver(wechat) == 1


@pytest.mark.parametrize(("status", "acked"), [(200, True), (204, True), (201, False), (202, False),
                                               (400, False), (401, False), (500, False)])
async def test_only_200_and_204_count_as_acks(
    wechat: Merchant, receiver: Receiver, status: int, acked: bool
) -> None:
    receiver.default = status
    await _paid(wechat, receiver, "T20261126000205")
    await _deliver(wechat)
    assert _stats(wechat, "T20261126000205")["state"] == ("acked" if acked else "pending")


async def test_an_unreachable_notify_url_is_retried(wechat: Merchant, receiver: Receiver) -> None:
    url = receiver.url
    assert receiver.server is not None
    await receiver.server.close()
    await wechat.place("T20261126000206", notify_url=url)
    await wechat.pay("T20261126000206")
    assert await _deliver(wechat) == 1
    stats = _stats(wechat, "T20261126000206")
    assert (stats["state"], stats["failed"]) == ("pending", 1)
    assert stats["next_attempt_at"] == "2026-11-26T12:00:15+08:00"


async def test_an_answer_slower_than_the_ack_timeout_is_a_failure(
    wechat_keys: Any, receiver: Receiver
) -> None:
    assert ACK_TIMEOUT == 5.0
    ledger = Ledger(wechat_keys.mchid, wechat_keys.appid)
    body = {"out_trade_no": "T20261126000207"}
    ledger.place(JsapiRequest(appid=wechat_keys.appid, mchid=wechat_keys.mchid, description="slow",
                              out_trade_no="T20261126000207", notify_url=receiver.url, total=1, openid="o1",
                              params=body), T0)
    order = ledger.pay("T20261126000207", T0)
    receiver.hold = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        notifier = Notifier(wechat_keys, session, FaultDice(), ack_timeout=0.2)
        notifier.enqueue(order, T0)
        assert await notifier.deliver_due(T0) == 1
    notification = notifier.get("T20261126000207")
    assert notification is not None and len(receiver.posts) == 1
    assert (notification.state, notification.stats.failed, notification.due) == (
        "pending", 1, T0 + dt.timedelta(seconds=15))


async def test_the_apps_notifier_waits_five_seconds_for_an_ack(wechat: Merchant) -> None:
    assert wechat.app[NOTIFIER].ack_timeout == 5.0


# -- faults ---------------------------------------------------------------------------------------

async def test_never_deliver_drops_every_attempt(make_wechat: MakeWechat, receiver: Receiver) -> None:
    wechat = await make_wechat(faults=WechatFaults(never_deliver=1.0))
    await _paid(wechat, receiver, "T20261126000210")
    assert await _deliver(wechat) == 1
    for interval in RETRY_SCHEDULE:
        wechat.clock.advance(interval)
        assert await _deliver(wechat) == 1
    stats = _stats(wechat, "T20261126000210")
    assert receiver.posts == [] and (stats["state"], stats["dropped"], stats["sent"]) == ("exhausted", 16, 0)


async def test_a_dropped_first_send_is_retried(make_wechat: MakeWechat, receiver: Receiver) -> None:
    wechat = await make_wechat(faults=WechatFaults(drop_first=1.0))
    await _paid(wechat, receiver, "T20261126000211")
    await _deliver(wechat)
    assert receiver.posts == [] and _stats(wechat, "T20261126000211")["dropped"] == 1
    wechat.clock.advance(15)
    await _deliver(wechat)
    assert len(receiver.posts) == 1 and _stats(wechat, "T20261126000211")["state"] == "acked"


async def test_a_duplicate_posts_the_same_notification_twice(
    make_wechat: MakeWechat, receiver: Receiver
) -> None:
    wechat = await make_wechat(faults=WechatFaults(duplicate=1.0))
    await _paid(wechat, receiver, "T20261126000212")
    assert await _deliver(wechat) == 1
    first, second = receiver.posts
    assert first.body == second.body
    assert first.headers["Wechatpay-Signature"] == second.headers["Wechatpay-Signature"]
    stats = _stats(wechat, "T20261126000212")
    assert (stats["sent"], stats["duplicates"], stats["acked"]) == (2, 1, 1)


async def test_a_probe_precedes_the_real_send_and_a_verifying_receiver_rejects_it(
    make_wechat: MakeWechat, receiver: Receiver
) -> None:
    wechat = await make_wechat(faults=WechatFaults(probe=1.0))
    receiver.verify_now = lambda: wechat.clock.now().timestamp()
    await _paid(wechat, receiver, "T20261126000213")
    await _deliver(wechat)
    probe, real = receiver.posts
    signature = probe.headers["Wechatpay-Signature"]
    assert probe.probe and not real.probe and probe.body == real.body
    with pytest.raises(binascii.Error):
        base64.b64decode(signature, validate=True)
    stats = _stats(wechat, "T20261126000213")
    assert (stats["probes"], stats["probes_acked"], stats["acked"]) == (1, 0, 1)


async def test_a_receiver_that_acks_probes_is_caught(make_wechat: MakeWechat, receiver: Receiver) -> None:
    wechat = await make_wechat(faults=WechatFaults(probe=1.0))
    await _paid(wechat, receiver, "T20261126000214")
    await _deliver(wechat)
    assert _stats(wechat, "T20261126000214")["probes_acked"] == 1


async def test_a_corrupted_signature_fails_verification_until_a_clean_retry(
    make_wechat: MakeWechat, receiver: Receiver
) -> None:
    wechat = await make_wechat(faults=WechatFaults(corrupt_signature=1.0))
    receiver.verify_now = lambda: wechat.clock.now().timestamp()
    await _paid(wechat, receiver, "T20261126000215")
    await _deliver(wechat)
    assert _stats(wechat, "T20261126000215")["failed"] == 1
    assert base64.b64decode(receiver.posts[0].headers["Wechatpay-Signature"], validate=True)  # well-formed
    await wechat.control("PUT", "/sim/v1/faults", {})
    wechat.clock.advance(15)
    await _deliver(wechat)
    stats = _stats(wechat, "T20261126000215")
    assert (stats["state"], stats["forged_acked"]) == ("acked", 0)


async def test_a_receiver_that_acks_a_forged_signature_is_caught(
    make_wechat: MakeWechat, receiver: Receiver
) -> None:
    wechat = await make_wechat(faults=WechatFaults(corrupt_signature=1.0))
    await _paid(wechat, receiver, "T20261126000216")
    await _deliver(wechat)
    assert _stats(wechat, "T20261126000216")["forged_acked"] == 1


async def test_a_reordered_notification_goes_out_after_the_next_one(make_wechat: MakeWechat,
                                                                    receiver: Receiver) -> None:
    wechat = await make_wechat(faults=WechatFaults(reorder=1.0))
    await _paid(wechat, receiver, "T20261126000217")
    await wechat.control("PUT", "/sim/v1/faults", {})
    await _paid(wechat, receiver, "T20261126000218")
    assert await _deliver(wechat) == 2
    assert [json.loads(crypto.aead_decrypt(
        wechat.keys.apiv3_key, r["nonce"], r["associated_data"], r["ciphertext"]))["out_trade_no"]
        for r in (json.loads(post.body)["resource"] for post in receiver.posts)] == [
        "T20261126000218", "T20261126000217"]


async def test_a_held_notification_without_a_successor_goes_out_at_the_first_retry_slot(
    make_wechat: MakeWechat, receiver: Receiver
) -> None:
    wechat = await make_wechat(faults=WechatFaults(reorder=1.0))
    await _paid(wechat, receiver, "T20261126000219")
    assert await _deliver(wechat) == 0
    wechat.clock.advance(15)
    assert await _deliver(wechat) == 1 and len(receiver.posts) == 1


async def test_a_delay_postpones_each_send_scaled_by_time_factor(
    make_wechat: MakeWechat, receiver: Receiver
) -> None:
    wechat = await make_wechat(faults=WechatFaults(delay_min=20, delay_max=20), time_factor=10)
    await _paid(wechat, receiver, "T20261126000220")
    wechat.clock.advance(1.99)
    assert await _deliver(wechat) == 0
    wechat.clock.advance(0.01)
    assert await _deliver(wechat) == 1


async def _chaos_run(
    make_wechat: MakeWechat, receiver: Receiver, seed: int
) -> tuple[list[dict[str, Any]], int]:
    clock = FakeClock(T0)
    plan = WechatFaults(drop_first=0.3, drop_retry=0.2, duplicate=0.25, probe=0.2, reorder=0.1)
    wechat = await make_wechat(faults=plan, seed=seed, clock=clock)
    receiver.verify_now = lambda: clock.now().timestamp()
    before = len(receiver.posts)
    for n in range(20):
        await _paid(wechat, receiver, f"S{seed}T2026112600{n:04d}")
    await _deliver(wechat)
    for interval in RETRY_SCHEDULE[:4]:
        clock.advance(interval)
        await _deliver(wechat)
    stats = [n.stats for n in wechat.app[NOTIFIER].notifications()]
    assert len(receiver.posts) - before == sum(s.sent + s.probes for s in stats)
    return [dataclasses.asdict(s) for s in stats], len(receiver.posts) - before


async def test_notification_faults_replay_exactly_from_the_seed(
    make_wechat: MakeWechat, receiver: Receiver
) -> None:
    first, posts = await _chaos_run(make_wechat, receiver, seed=7)
    again, posts_again = await _chaos_run(make_wechat, receiver, seed=7)
    other, _ = await _chaos_run(make_wechat, receiver, seed=8)
    assert (first, posts) == (again, posts_again) and first != other
    totals = {key: sum(s[key] for s in first) for key in first[0]}
    assert totals == {"sent": 28, "dropped": 7, "acked": 20, "failed": 0, "duplicates": 8, "probes": 3,
                      "probes_acked": 0, "forged_acked": 0}


# -- background delivery and shutdown ------------------------------------------------------------

async def test_the_background_loop_delivers_without_being_asked(
    make_wechat: MakeWechat, receiver: Receiver
) -> None:
    wechat = await make_wechat(notify=True, clock=SystemClock())
    await _paid(wechat, receiver, "T20261126000230")
    await asyncio.wait_for(receiver.arrived.wait(), 5)
    assert json.loads(receiver.posts[0].body)["event_type"] == "TRANSACTION.SUCCESS"


async def test_shutdown_cancels_a_send_in_flight(make_wechat: MakeWechat, receiver: Receiver) -> None:
    wechat = await make_wechat(notify=True, clock=SystemClock())
    receiver.hold = asyncio.Event()
    await _paid(wechat, receiver, "T20261126000231")
    await asyncio.wait_for(receiver.arrived.wait(), 5)
    notifier = wechat.app[NOTIFIER]
    await wechat.client.close()
    notification = notifier.get("T20261126000231")
    assert notification is not None and not notification.in_flight
    assert (notification.state, notification.stats.failed) == ("pending", 1)
