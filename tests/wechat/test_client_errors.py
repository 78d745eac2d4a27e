"""WechatPayClient's narrow error paths, with aioresponses standing in for the network."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from payflow import errors
from payflow.devkeys import KeySet
from payflow.ratelimit import Budgets, Priority, RateLimiter, Throttled
from payflow.wechat import crypto
from payflow.wechat.api import Order
from payflow.wechat.client import BillInfo, WechatPayClient
from tests.mock_http import mocked_http as aioresponses

BASE = "https://wechat.test"
NOW = 1_764_158_400.0
JSAPI = f"{BASE}/v3/pay/transactions/jsapi"
ORDER = Order(out_trade_no="PF0000000001", description="Beans", amount=1999,
                   openid="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
                   time_expire=dt.datetime(2026, 11, 26, 22, 0, tzinfo=dt.timezone(dt.timedelta(hours=8))),
                   notify_url="https://pay.example.com/v1/wechat/notify")


async def _no_sleep(seconds: float) -> None:
    return None


def make_client(keyset: KeySet, **options: Any) -> WechatPayClient:
    """A client of the test merchant against BASE, at NOW, that never waits (retries or limiter)."""
    return WechatPayClient(
        base_url=BASE, mchid=keyset.mchid, appid=keyset.appid, mch_serial=keyset.mch_serial,
        private_key=keyset.merchant_private_key, platform_keys={keyset.pub_key_id: keyset.platform_public_key},
        timeout=2, now=lambda: NOW, sleep=_no_sleep,
        **{"limiter": RateLimiter(rate=1000, burst=1000), **options},
    )


@pytest.fixture
async def client(keyset: KeySet) -> AsyncIterator[WechatPayClient]:
    client = make_client(keyset)
    yield client
    await client.aclose()


def _signed(keyset: KeySet, body: bytes, *, key: Any = None) -> dict[str, str]:
    return crypto.sign_response_headers(key or keyset.platform_private_key, keyset.pub_key_id, body,
                                        timestamp=int(NOW))


def _json(
    keyset: KeySet, status: int, payload: dict[str, Any], *, signed: bool = True, key: Any = None
) -> dict[str, Any]:
    body = json.dumps(payload).encode()
    return {"status": status, "body": body, "headers": _signed(keyset, body, key=key) if signed else {}}


async def test_place_retries_with_identical_bytes_after_500(client: WechatPayClient, keyset: KeySet) -> None:
    seen: list[tuple[bytes, str]] = []

    def capture(url: Any, **kwargs: Any) -> None:
        seen.append((kwargs["data"], kwargs["headers"]["Authorization"]))

    with aioresponses() as mocked:
        mocked.post(JSAPI, callback=capture, **_json(keyset, 500, {"code": "SYSTEM_ERROR", "message": "busy"}))
        mocked.post(JSAPI, callback=capture, exception=TimeoutError())
        mocked.post(JSAPI, callback=capture, **_json(keyset, 200, {"prepay_id": "wx26prepay"}))
        assert (await client.place(ORDER)).prepay_id == "wx26prepay"
    assert len(seen) == 3 and len({body for body, _ in seen}) == 1
    body = json.loads(seen[0][0])
    assert body["out_trade_no"] == "PF0000000001" and body["amount"] == {"total": 1999, "currency": "CNY"}
    assert body["time_expire"] == "2026-11-26T22:00:00+08:00" and body["mchid"] == keyset.mchid
    # each attempt is signed afresh (new nonce) over the same bytes
    assert len({auth for _, auth in seen}) == 3
    auth = crypto.parse_authorization_header(seen[0][1])
    message = crypto.build_request_message("POST", "/v3/pay/transactions/jsapi", auth["timestamp"],
                                           auth["nonce_str"], seen[0][0])
    crypto.verify(keyset.merchant_public_key, message, auth["signature"])


async def test_place_gives_up_retryable_after_its_attempts(client: WechatPayClient, keyset: KeySet) -> None:
    with aioresponses() as mocked:
        mocked.post(JSAPI, repeat=True, **_json(keyset, 503, {"code": "SERVICE_UNAVAILABLE", "message": "x"}))
        with pytest.raises(errors.WechatRetryable) as info:
            await client.place(ORDER)
    assert info.value.status == 503


@pytest.mark.parametrize(
    ("status", "payload", "signed", "expected", "code"),
    [
        (400, {"code": "PARAM_ERROR", "message": "openid"}, True, errors.WechatFinal, "PARAM_ERROR"),
        (403, {"code": "OUT_TRADE_NO_USED", "message": "used"}, True, errors.WechatFinal, "OUT_TRADE_NO_USED"),
        (401, {"code": "SIGN_ERROR", "message": "sign"}, False, errors.WechatFinal, "SIGN_ERROR"),
        (429, {"code": "FREQUENCY_LIMITED", "message": "slow"}, True, errors.WechatRetryable, "FREQUENCY_LIMITED"),
        (202, {"code": "USER_PAYING", "message": "paying"}, True, errors.WechatRetryable, "USER_PAYING"),
        (200, {"prepay_id": "wx"}, False, errors.WechatRetryable, None),  # unsigned success: maybe forged
        (200, {"no_prepay_id": 1}, True, errors.WechatRetryable, None),
    ],
)
async def test_error_classification(client: WechatPayClient, keyset: KeySet, status: int,
                                   payload: dict[str, Any], signed: bool, expected: type, code: str | None) -> None:
    client._place_attempts = 1
    with aioresponses() as mocked:
        mocked.post(JSAPI, **_json(keyset, status, payload, signed=signed))
        with pytest.raises(expected) as info:
            await client.place(ORDER)
    assert info.value.wechat_code == code


async def test_a_final_error_with_a_forged_signature_is_not_final(
    client: WechatPayClient, keyset: KeySet, other_keyset: KeySet
) -> None:
    client._place_attempts = 1
    with aioresponses() as mocked:
        mocked.post(JSAPI, **_json(keyset, 400, {"code": "PARAM_ERROR", "message": "x"},
                                   key=other_keyset.platform_private_key))
        with pytest.raises(errors.WechatRetryable):
            await client.place(ORDER)


async def test_rate_limit_pauses_only_the_api_that_answered_it(keyset: KeySet) -> None:
    budgets = Budgets({"jsapi": 1000, "query": 1000})
    client = make_client(keyset, limiter=budgets, place_attempts=1)
    try:
        with aioresponses() as mocked:
            mocked.post(JSAPI, **_json(keyset, 429, {"code": "FREQUENCY_LIMITED", "message": "slow"}))
            with pytest.raises(errors.WechatRetryable):
                await client.place(ORDER)
    finally:
        await client.aclose()
    assert budgets.limiter("jsapi").paused_for > 0 and budgets.limiter("query").paused_for == 0


async def test_a_throttled_placement_is_not_retried(keyset: KeySet) -> None:
    asked: list[Priority | None] = []

    class Counting(RateLimiter):
        async def acquire(self, level: Priority | None = None) -> None:
            asked.append(level)
            await super().acquire(level)

    limiter = Counting(rate=0.001, burst=1, waits={Priority.PAYER: 0.0})
    client = make_client(keyset, limiter=limiter, place_attempts=3)
    await limiter.acquire(Priority.PAYER)  # the only token
    try:
        with aioresponses() as mocked:
            with pytest.raises(Throttled):
                await client.place(ORDER)
            assert mocked.requests == {}  # nothing reached WeChat
    finally:
        await client.aclose()
    assert len(asked) == 2  # ours, and the placement's one try: the payer already waited all it may


async def test_query_shapes(client: WechatPayClient, keyset: KeySet) -> None:
    url = re.compile(rf"^{re.escape(BASE)}/v3/pay/transactions/out-trade-no/.*")
    success = {"out_trade_no": "PF0000000001", "trade_state": "SUCCESS", "transaction_id": "4200",
               "success_time": "2026-11-26T20:01:02+08:00", "mchid": keyset.mchid, "appid": keyset.appid,
               "amount": {"total": 1999, "payer_total": 1999, "currency": "CNY", "payer_currency": "CNY"}}
    with aioresponses() as mocked:
        mocked.get(url, **_json(keyset, 200, success))
        mocked.get(url, **_json(keyset, 404, {"code": "ORDER_NOT_EXIST", "message": "none"}))
        mocked.get(url, **_json(keyset, 200, {"out_trade_no": "PF0000000001", "trade_state": "NOTPAY",
                                               "amount": {"payer_currency": "CNY", "total": 1999}}))
        paid = await client.query("PF0000000001")
        assert paid is not None and paid.trade_state == "SUCCESS" and paid.amount == 1999
        assert paid.success_time == dt.datetime(2026, 11, 26, 12, 1, 2, tzinfo=dt.UTC)
        assert await client.query("PF0000000001") is None
        unpaid = await client.query("PF0000000001")
        assert unpaid is not None and unpaid.trade_state == "NOTPAY" and unpaid.transaction_id is None
        [(method, sent_url)] = [key for key in mocked.requests if key[0] == "GET"]
        assert sent_url.raw_path_qs == f"/v3/pay/transactions/out-trade-no/PF0000000001?mchid={keyset.mchid}"


async def test_close_needs_a_signed_204(client: WechatPayClient, keyset: KeySet) -> None:
    url = f"{BASE}/v3/pay/transactions/out-trade-no/PF0000000001/close"
    with aioresponses() as mocked:
        mocked.post(url, status=204, body=b"", headers=_signed(keyset, b""))
        mocked.post(url, status=204, body=b"")
        mocked.post(url, **_json(keyset, 400, {"code": "ORDERPAID", "message": "paid"}))
        await client.close_order("PF0000000001")
        with pytest.raises(errors.WechatRetryable):
            await client.close_order("PF0000000001")
        with pytest.raises(errors.WechatFinal) as info:
            await client.close_order("PF0000000001")
    assert info.value.wechat_code == "ORDERPAID"


@pytest.mark.parametrize("compressed", [False, True])
async def test_bill_download_checks_sha1(client: WechatPayClient, compressed: bool) -> None:
    content = "\ufeff交易时间,公众账号ID\r\n`2026-11-26 10:00:00,`wx1\r\n".encode()
    download = f"{BASE}/v3/billdownload/file?token=abc"
    info = BillInfo(dt.date(2026, 11, 26), "SHA1", crypto.sha1_hex(content), download, compressed)
    with aioresponses() as mocked:
        wire = gzip.compress(content) if compressed else content
        mocked.get(download, status=200, body=wire, content_type="application/octet-stream")  # unsigned
        mocked.get(download, status=200, body=wire + (b"" if compressed else b"x"))
        assert await client.download_bill(info) == content
        if not compressed:
            with pytest.raises(errors.BillHashMismatch):
                await client.download_bill(info)


async def test_bill_download_refuses_foreign_paths(client: WechatPayClient) -> None:
    info = BillInfo(dt.date(2026, 11, 26), "SHA1", "0" * 40, f"{BASE}/v3/other?token=abc", False)
    with pytest.raises(errors.WechatFinal):
        await client.download_bill(info)


async def test_bill_calls_are_asked_again_after_retryable_failures(client: WechatPayClient, keyset: KeySet) -> None:
    # A 5xx, a 429 or a lost answer must not fail a whole reconciliation run: both bill GETs are repeated.
    content = "\ufeff交易时间,公众账号ID\r\n`2026-11-26 10:00:00,`wx1\r\n".encode()
    apply = re.compile(rf"^{re.escape(BASE)}/v3/bill/tradebill\?.*$")
    download = f"{BASE}/v3/billdownload/file?token=abc"
    calls: list[str] = []

    def count(url: Any, **kwargs: Any) -> None:
        calls.append(str(url).split("?")[0].rsplit("/", 1)[-1])

    answer = {"hash_type": "SHA1", "hash_value": crypto.sha1_hex(content).upper(), "download_url": download}
    with aioresponses() as mocked:
        mocked.get(apply, callback=count, **_json(keyset, 500, {"code": "SYSTEM_ERROR", "message": "busy"}))
        mocked.get(apply, callback=count, **_json(keyset, 200, answer))
        mocked.get(download, callback=count, exception=TimeoutError())
        mocked.get(download, callback=count, status=200, body=gzip.compress(content)[:-8])  # truncated
        mocked.get(download, callback=count, status=200, body=gzip.compress(content))
        info = await client.trade_bill(dt.date(2026, 11, 26), gzip=True)
        assert await client.download_bill(info) == content
    assert calls == ["tradebill", "tradebill", "file", "file", "file"]


async def test_bill_apply_gives_up_after_its_attempts_and_a_bad_sha1_is_not_retried(
    client: WechatPayClient, keyset: KeySet
) -> None:
    apply = re.compile(rf"^{re.escape(BASE)}/v3/bill/tradebill\?.*$")
    with aioresponses() as mocked:
        mocked.get(apply, repeat=True, **_json(keyset, 500, {"code": "SYSTEM_ERROR", "message": "busy"}))
        with pytest.raises(errors.WechatRetryable):
            await client.trade_bill(dt.date(2026, 11, 26))
        assert sum(len(calls) for calls in mocked.requests.values()) == 3

    download = f"{BASE}/v3/billdownload/file?token=abc"
    info = BillInfo(dt.date(2026, 11, 26), "SHA1", "0" * 40, download, False)
    with aioresponses() as mocked:
        mocked.get(download, repeat=True, status=200, body=b"not the announced bill")
        with pytest.raises(errors.BillHashMismatch):
            await client.download_bill(info)
        assert sum(len(calls) for calls in mocked.requests.values()) == 1


REFUNDS = f"{BASE}/v3/refund/domestic/refunds"


async def test_refund_retries_with_identical_bytes_and_reads_the_answer(client: WechatPayClient,
                                                                       keyset: KeySet) -> None:
    from payflow.wechat.api import RefundRequest

    seen: list[bytes] = []

    def capture(url: Any, **kwargs: Any) -> None:
        seen.append(kwargs["data"])

    request = RefundRequest(out_refund_no="R-1", out_trade_no="PF0000000001", transaction_id="4200", amount=500,
                            total=1999, notify_url="https://pay.example.com/v1/wechat/notify", reason="damaged")
    answer = {"out_refund_no": "R-1", "out_trade_no": "PF0000000001", "refund_id": "5030", "status": "PROCESSING",
              "amount": {"refund": 500, "total": 1999, "currency": "CNY"}}
    with aioresponses() as mocked:
        mocked.post(REFUNDS, callback=capture, **_json(keyset, 500, {"code": "SYSTEM_ERROR", "message": "busy"}))
        mocked.post(REFUNDS, callback=capture, exception=TimeoutError())
        mocked.post(REFUNDS, callback=capture, repeat=True, **_json(keyset, 200, answer))
        got = await client.refund(request)
        again = await client.refund(request)  # a later re-submission of the same refund
    assert (got.status, got.refund_id, got.amount, got.total) == ("PROCESSING", "5030", 500, 1999)
    assert again == got
    assert len(seen) == 4 and len(set(seen)) == 1
    assert json.loads(seen[0]) == {"out_refund_no": "R-1", "out_trade_no": "PF0000000001", "transaction_id": "4200",
                                   "reason": "damaged", "notify_url": "https://pay.example.com/v1/wechat/notify",
                                   "amount": {"refund": 500, "total": 1999, "currency": "CNY"}}


async def test_refund_query_shapes(client: WechatPayClient, keyset: KeySet) -> None:
    url = re.compile(rf"^{re.escape(BASE)}/v3/refund/domestic/refunds/.*")
    success = {"out_refund_no": "R-1", "out_trade_no": "PF0000000001", "refund_id": "5030", "status": "SUCCESS",
               "success_time": "2026-11-26T20:01:02+08:00", "amount": {"refund": 500, "total": 1999}}
    with aioresponses() as mocked:
        mocked.get(url, **_json(keyset, 200, success))
        mocked.get(url, **_json(keyset, 404, {"code": "RESOURCE_NOT_EXISTS", "message": "退款单不存在"}))
        mocked.get(url, **_json(keyset, 200, {**success, "out_refund_no": "R-2"}))
        mocked.get(url, **_json(keyset, 200, {**success, "status": "UNHEARD_OF"}))
        done = await client.query_refund("R-1")
        assert done is not None and done.success_time == dt.datetime(2026, 11, 26, 12, 1, 2, tzinfo=dt.UTC)
        assert await client.query_refund("R-1") is None
        with pytest.raises(errors.WechatRetryable):  # an answer about another refund is no answer
            await client.query_refund("R-1")
        with pytest.raises(errors.WechatRetryable):
            await client.query_refund("R-1")
