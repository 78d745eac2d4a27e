"""POST /v1/wechat/notify: verify over the raw body, decrypt, check, commit before the 204."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
import structlog.testing
from aiohttp.test_utils import TestClient

from payflow.clock import FakeClock
from payflow.devkeys import KeySet
from payflow.http import keys as app_keys
from payflow.service import NewPayment, PaymentService
from payflow.states import State
from payflow.store import PaymentStore
from tests import notifications as wx

NOTIFY = "/v1/wechat/notify"


@pytest.fixture
async def prepaid(service: PaymentService) -> Any:
    created = await service.create_payment(NewPayment(order_id="order-1", amount=1999, description="Beans",
                                                      openid="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"))
    return created.payment


async def _post(client: TestClient, keyset: KeySet, clock: FakeClock, body: bytes, **sign: Any) -> Any:
    headers = wx.signed_headers(keyset, body, timestamp=int(clock.now().timestamp()), **sign)
    return await client.post(NOTIFY, data=body, headers=headers)


async def _fail(response: Any, status: int) -> str:
    assert response.status == status, await response.text()
    body = await response.json()
    assert body["code"] == "FAIL" and isinstance(body["message"], str) and body["message"]
    return body["message"]


async def test_valid_notification_pays_once_and_commits_before_answering(
    client: TestClient, keyset: KeySet, clock: FakeClock, prepaid: Any, sqlite_store: PaymentStore
) -> None:
    txn = wx.transaction(keyset, prepaid.out_trade_no, 1999)
    body = wx.envelope(keyset, txn, notification_id="EV-1")
    response = await _post(client, keyset, clock, body)
    assert response.status == 204 and await response.read() == b""
    # By the time the 204 is read, the effect is durable: read it through a fresh connection.
    from payflow.store import open_store

    fresh = await open_store(client.app[app_keys.SETTINGS].database_url)
    try:
        paid = await fresh.get(prepaid.out_trade_no)
        note = await fresh.get_notification("EV-1")
    finally:
        await fresh.close()
    assert paid is not None and paid.state is State.NOTIFIED and paid.paid
    assert paid.transaction_id == txn["transaction_id"] and paid.paid_amount == 1999
    assert paid.paid_at is not None and paid.paid_at.isoformat() == "2026-11-26T12:01:02+00:00"
    # The notified row is the outbox, and this process forwards at once: here no backend is configured,
    # so that first attempt fails and the next one is scheduled on PAYFLOW_FORWARD_SCHEDULE.
    await client.app[app_keys.SERVICE].drain()
    after = await sqlite_store.get(prepaid.out_trade_no)
    assert after is not None and after.state is State.NOTIFIED and after.attempts == 1
    assert after.next_attempt_at == clock.now() + dt.timedelta(seconds=15)
    assert note is not None and note.outcome == "accepted" and note.out_trade_no == prepaid.out_trade_no
    *_, paid_event, failed = await sqlite_store.events(prepaid.out_trade_no)
    assert (paid_event.trigger, paid_event.source, paid_event.to_state) == ("pay", "notify", State.NOTIFIED)
    assert (failed.trigger, failed.detail["attempt"]) == ("forward_failed", 1)  # with why: not configured


async def test_duplicates_make_one_transition(
    client: TestClient, keyset: KeySet, clock: FakeClock, prepaid: Any, sqlite_store: PaymentStore
) -> None:
    body = wx.envelope(keyset, wx.transaction(keyset, prepaid.out_trade_no, 1999), notification_id="EV-2")
    for _ in range(3):
        assert (await _post(client, keyset, clock, body)).status == 204
    # and three more at the same moment, as WeChat's several servers may do
    responses = await asyncio.gather(*(_post(client, keyset, clock, body) for _ in range(3)))
    assert [r.status for r in responses] == [204, 204, 204]
    # a second notification id for the same payment (e.g. after the query path paid it) changes nothing
    other = wx.envelope(keyset, wx.transaction(keyset, prepaid.out_trade_no, 1999), notification_id="EV-3")
    assert (await _post(client, keyset, clock, other)).status == 204
    triggers = [e.trigger for e in await sqlite_store.events(prepaid.out_trade_no)]
    assert triggers == ["create", "prepay", "pay", "forward_failed"]  # one pay; its one forward found no backend
    assert (await sqlite_store.get_notification("EV-3")).outcome == "already_paid"  # type: ignore[union-attr]


@pytest.mark.parametrize("fault", ["tampered", "wrong_key", "wrong_serial", "stale", "future", "probe",
                                   "unsigned"])
async def test_unverifiable_notifications_are_refused_and_change_nothing(
    client: TestClient, keyset: KeySet, other_keyset: KeySet, clock: FakeClock, prepaid: Any,
    sqlite_store: PaymentStore, fault: str,
) -> None:
    body = wx.envelope(keyset, wx.transaction(keyset, prepaid.out_trade_no, 1999), notification_id="EV-X")
    now = int(clock.now().timestamp())
    headers = wx.signed_headers(keyset, body, timestamp=now)
    if fault == "tampered":
        body = body.replace(b'"summary":"', b'"summary":"x')
    elif fault == "wrong_key":
        headers = wx.signed_headers(keyset, body, timestamp=now, private_key=other_keyset.platform_private_key)
    elif fault == "wrong_serial":
        headers = wx.signed_headers(keyset, body, timestamp=now, serial="PUB_KEY_ID_999")
    elif fault == "stale":
        headers = wx.signed_headers(keyset, body, timestamp=now - 300)
    elif fault == "future":
        headers = wx.signed_headers(keyset, body, timestamp=now + 300)
    elif fault == "probe":
        headers["Wechatpay-Signature"] = "WECHATPAY/SIGNTEST/" + headers["Wechatpay-Signature"][19:]
    elif fault == "unsigned":
        headers = {"Content-Type": "application/json"}
    await _fail(await client.post(NOTIFY, data=body, headers=headers), 401)
    payment = await sqlite_store.get(prepaid.out_trade_no)
    assert payment == prepaid
    assert await sqlite_store.get_notification("EV-X") is None


@pytest.mark.parametrize("field", ["mchid", "appid"])
async def test_another_merchants_notification_is_refused(
    client: TestClient, keyset: KeySet, clock: FakeClock, prepaid: Any, sqlite_store: PaymentStore, field: str
) -> None:
    txn = wx.transaction(keyset, prepaid.out_trade_no, 1999, **{field: "somebody-else"})
    message = await _fail(await _post(client, keyset, clock, wx.envelope(keyset, txn)), 400)
    assert "merchant" in message
    assert (await sqlite_store.get(prepaid.out_trade_no)) == prepaid


async def test_amount_mismatch_goes_to_review_and_is_acknowledged(
    client: TestClient, keyset: KeySet, clock: FakeClock, prepaid: Any, sqlite_store: PaymentStore
) -> None:
    body = wx.envelope(keyset, wx.transaction(keyset, prepaid.out_trade_no, 1), notification_id="EV-M")
    assert (await _post(client, keyset, clock, body)).status == 204
    payment = await sqlite_store.get(prepaid.out_trade_no)
    assert payment is not None and payment.state is State.NEEDS_REVIEW and not payment.paid
    assert payment.paid_amount == 1
    last = (await sqlite_store.events(prepaid.out_trade_no))[-1]
    assert last.trigger == "flag" and last.detail["reason"] == "amount_mismatch"
    assert last.detail["expected_amount"] == 1999 and last.detail["paid_amount"] == 1
    assert (await sqlite_store.get_notification("EV-M")).outcome == "amount_mismatch"  # type: ignore[union-attr]


async def test_unknown_payment_is_recorded_and_acknowledged(
    client: TestClient, keyset: KeySet, clock: FakeClock, sqlite_store: PaymentStore
) -> None:
    body = wx.envelope(keyset, wx.transaction(keyset, "NEVERPLACED01", 500), notification_id="EV-U")
    assert (await _post(client, keyset, clock, body)).status == 204
    note = await sqlite_store.get_notification("EV-U")
    assert note is not None and note.outcome == "unknown_payment" and note.out_trade_no == "NEVERPLACED01"
    assert note.resource["amount"]["total"] == 500  # nothing lost: the decrypted facts are kept


async def test_paid_after_close_goes_to_review(
    client: TestClient, keyset: KeySet, clock: FakeClock, prepaid: Any, sqlite_store: PaymentStore,
    service: PaymentService,
) -> None:
    from payflow.states import Source, Trigger

    await service.core.apply(prepaid, Trigger.CLOSE, source=Source.SWEEPER)
    body = wx.envelope(keyset, wx.transaction(keyset, prepaid.out_trade_no, 1999))
    assert (await _post(client, keyset, clock, body)).status == 204
    payment = await sqlite_store.get(prepaid.out_trade_no)
    assert payment is not None and payment.state is State.NEEDS_REVIEW
    assert (await sqlite_store.events(prepaid.out_trade_no))[-1].detail["reason"] == "paid_after_close"


async def test_other_event_types_are_recorded_not_applied(
    client: TestClient, keyset: KeySet, clock: FakeClock, prepaid: Any, sqlite_store: PaymentStore
) -> None:
    txn = wx.transaction(keyset, prepaid.out_trade_no, 1999, trade_state="PAYERROR")
    body = wx.envelope(keyset, txn, notification_id="EV-O", event_type="TRANSACTION.FAIL")
    assert (await _post(client, keyset, clock, body)).status == 204
    assert (await sqlite_store.get(prepaid.out_trade_no)) == prepaid
    assert (await sqlite_store.get_notification("EV-O")).outcome == "ignored"  # type: ignore[union-attr]


async def test_malformed_but_signed_bodies_are_refused(client: TestClient, keyset: KeySet, clock: FakeClock) -> None:
    for body in (b"not json", b"[]", b'{"id":"EV-B","event_type":"TRANSACTION.SUCCESS"}',
                 b'{"id":"EV-B","event_type":"TRANSACTION.SUCCESS","resource":{"algorithm":"AEAD_AES_256_GCM",'
                 b'"nonce":"123456789012","ciphertext":"AAAA","associated_data":"transaction"}}'):
        await _fail(await _post(client, keyset, clock, body), 400)


async def test_oversized_notification_is_refused(client: TestClient, keyset: KeySet, clock: FakeClock,
                                                 settings: Any) -> None:
    body = b"{" + b" " * settings.max_body_bytes + b"}"
    await _fail(await _post(client, keyset, clock, body), 413)


async def test_store_failure_answers_500_so_wechat_retries(
    client: TestClient, keyset: KeySet, clock: FakeClock, prepaid: Any, sqlite_store: PaymentStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from payflow import errors

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise errors.StoreUnavailable("disk on fire")

    monkeypatch.setattr(sqlite_store, "decide", broken)
    body = wx.envelope(keyset, wx.transaction(keyset, prepaid.out_trade_no, 1999), notification_id="EV-S")
    await _fail(await _post(client, keyset, clock, body), 500)
    monkeypatch.undo()
    assert (await _post(client, keyset, clock, body)).status == 204  # WeChat's retry then lands
    assert (await sqlite_store.get(prepaid.out_trade_no)).state is State.NOTIFIED  # type: ignore[union-attr]


async def test_a_late_success_never_moves_a_synced_payment_back(
    client: TestClient, keyset: KeySet, clock: FakeClock, prepaid: Any, sqlite_store: PaymentStore,
    service: PaymentService,
) -> None:
    from payflow.states import Source, Trigger

    paid = await service.core.apply(prepaid, Trigger.PAY, source=Source.QUERY,
                                payload={"amount": 1999, "transaction_id": "4200"})
    synced = await service.core.apply(paid, Trigger.SYNC, source=Source.BACKEND)
    body = wx.envelope(keyset, wx.transaction(keyset, prepaid.out_trade_no, 1999))
    assert (await _post(client, keyset, clock, body)).status == 204
    assert await sqlite_store.get(prepaid.out_trade_no) == synced


async def test_a_refund_notification_of_a_refund_payflow_did_not_make_is_kept_with_an_alert(
    client: TestClient, keyset: KeySet, clock: FakeClock, prepaid: Any, sqlite_store: PaymentStore
) -> None:
    refund = {"mchid": keyset.mchid, "out_trade_no": prepaid.out_trade_no, "transaction_id": "4200000000001",
              "out_refund_no": "R-1", "refund_id": "50000000001", "refund_status": "SUCCESS",
              "amount": {"total": 1999, "refund": 1999, "payer_total": 1999, "payer_refund": 1999}}
    body = wx.envelope(keyset, refund, notification_id="EV-R", event_type="REFUND.SUCCESS")
    with structlog.testing.capture_logs() as logged:
        assert (await _post(client, keyset, clock, body)).status == 204
    note = await sqlite_store.get_notification("EV-R")
    assert note is not None and note.out_trade_no == prepaid.out_trade_no and note.outcome == "refund_unknown"
    alerts = [e for e in logged if e["event"] == "alert.refund_unknown"]
    assert len(alerts) == 1 and alerts[0]["out_refund_no"] == "R-1" and alerts[0]["refund_status"] == "SUCCESS"
    assert (await sqlite_store.get(prepaid.out_trade_no)) == prepaid  # a refund made elsewhere moves nothing

    other = wx.envelope(keyset, {**refund, "mchid": "1900000999"}, notification_id="EV-R2",
                        event_type="REFUND.SUCCESS")
    await _fail(await _post(client, keyset, clock, other), 400)  # another merchant's refund: refused
    assert await sqlite_store.get_notification("EV-R2") is None
