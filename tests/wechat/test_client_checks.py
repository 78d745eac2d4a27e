"""What WechatPayClient refuses to believe: unsigned error answers, and query answers about another order."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import structlog

from payflow import errors
from payflow.devkeys import KeySet
from payflow.wechat import crypto
from payflow.wechat.client import WechatPayClient
from tests.mock_http import mocked_http as aioresponses
from tests.wechat.test_client_errors import BASE, JSAPI, NOW, ORDER, make_client

NO = "PF0000000001"
QUERY = re.compile(rf"^{re.escape(BASE)}/v3/pay/transactions/out-trade-no/{NO}\?mchid=\d+$")
CLOSE = f"{BASE}/v3/pay/transactions/out-trade-no/{NO}/close"


@pytest.fixture
async def client(keyset: KeySet) -> AsyncIterator[WechatPayClient]:
    client = make_client(keyset, place_attempts=1)
    yield client
    await client.aclose()


def _answer(keyset: KeySet, status: int, payload: dict[str, Any] | None, *, signed: bool) -> dict[str, Any]:
    body = b"" if payload is None else json.dumps(payload).encode()
    headers = crypto.sign_response_headers(keyset.platform_private_key, keyset.pub_key_id, body,
                                           timestamp=int(NOW)) if signed else {}
    return {"status": status, "body": body, "headers": headers}


def _transaction(keyset: KeySet, **changes: Any) -> dict[str, Any]:
    return {"out_trade_no": NO, "trade_state": "SUCCESS", "transaction_id": "4200000001",
            "success_time": "2026-11-26T20:01:02+08:00", "mchid": keyset.mchid, "appid": keyset.appid,
            "amount": {"total": 1999, "payer_total": 1999, "currency": "CNY", "payer_currency": "CNY"}, **changes}


# --- item 11: only WeChat's own (signed) error answers are final ------------------------------------------

PROXY_ANSWERS = [
    pytest.param(404, {"code": "ORDER_NOT_EXIST", "message": "订单不存在"}, id="404-wechat-shaped"),
    pytest.param(404, None, id="404-empty"),
    pytest.param(400, {"code": "PARAM_ERROR", "message": "x"}, id="400"),
    pytest.param(403, {"code": "NO_AUTH", "message": "x"}, id="403"),
    pytest.param(405, None, id="405"),
    pytest.param(302, None, id="302-redirect"),
]


def _calls(client: WechatPayClient) -> dict[str, Callable[[], Awaitable[object]]]:
    return {"query": lambda: client.query(NO), "close": lambda: client.close_order(NO),
            "place": lambda: client.place(ORDER)}


def _mock(mocked: aioresponses, endpoint: str, answer: dict[str, Any]) -> None:
    if endpoint == "query":
        mocked.get(QUERY, **answer)
    else:
        mocked.post(CLOSE if endpoint == "close" else JSAPI, **answer)


@pytest.mark.parametrize("endpoint", ["query", "close", "place"])
@pytest.mark.parametrize(("status", "payload"), PROXY_ANSWERS)
async def test_an_unsigned_error_answer_is_retryable(
    client: WechatPayClient, keyset: KeySet, endpoint: str, status: int, payload: dict[str, Any] | None
) -> None:
    # A proxy's or a captive portal's 404 says nothing about the order: a query must not read it as
    # "no such order", and an expiry must not close locally on it while the order stays open at WeChat.
    with aioresponses() as mocked, structlog.testing.capture_logs() as logged:
        _mock(mocked, endpoint, _answer(keyset, status, payload, signed=False))
        with pytest.raises(errors.WechatRetryable) as info:
            await _calls(client)[endpoint]()
    assert info.value.status == status
    assert [entry["status"] for entry in logged if entry["event"] == "wechat.error_unverified"] == [status]


async def test_an_unsigned_order_not_exist_does_not_make_a_query_unknown(
    client: WechatPayClient, keyset: KeySet
) -> None:
    with aioresponses() as mocked:
        mocked.get(QUERY, **_answer(keyset, 404, {"code": "ORDER_NOT_EXIST", "message": "none"}, signed=False))
        mocked.get(QUERY, **_answer(keyset, 404, {"code": "ORDER_NOT_EXIST", "message": "none"}, signed=True))
        with pytest.raises(errors.WechatRetryable):
            await client.query(NO)
        assert await client.query(NO) is None  # WeChat's own (signed) 404 keeps its meaning


@pytest.mark.parametrize("endpoint", ["query", "close", "place"])
@pytest.mark.parametrize(("status", "payload"), [
    pytest.param(404, {"code": "RESOURCE_NOT_EXISTS", "message": "x"}, id="404"),
    pytest.param(400, {"code": "ORDERPAID", "message": "paid"}, id="400"),
    pytest.param(403, {"code": "NO_AUTH", "message": "x"}, id="403"),
])
async def test_a_signed_error_answer_stays_final(
    client: WechatPayClient, keyset: KeySet, endpoint: str, status: int, payload: dict[str, Any]
) -> None:
    with aioresponses() as mocked:
        _mock(mocked, endpoint, _answer(keyset, status, payload, signed=True))
        if endpoint == "query" and status == 404:
            assert await client.query(NO) is None
            return
        with pytest.raises(errors.WechatFinal) as info:
            await _calls(client)[endpoint]()
    assert (info.value.status, info.value.wechat_code) == (status, payload["code"])


async def test_an_unsigned_sign_error_stays_final(client: WechatPayClient, keyset: KeySet) -> None:
    # WeChat never signs its 401 SIGN_ERROR (WECHATPAY_V3 §2.1): waiting does not fix our own keys.
    with aioresponses() as mocked:
        mocked.post(CLOSE, **_answer(keyset, 401, {"code": "SIGN_ERROR", "message": "sign"}, signed=False))
        with pytest.raises(errors.WechatFinal):
            await client.close_order(NO)


# --- item 13: a query answer must be about the order asked for, at this merchant -------------------------

@pytest.mark.parametrize("trade_state", ["SUCCESS", "NOTPAY", "CLOSED"])
@pytest.mark.parametrize("field", ["out_trade_no", "mchid", "appid"])
async def test_a_query_answered_about_another_order_is_refused(
    client: WechatPayClient, keyset: KeySet, field: str, trade_state: str
) -> None:
    other = {"out_trade_no": "PF0000000002", "mchid": "1900000999", "appid": "wx0000000000000999"}[field]
    with aioresponses() as mocked, structlog.testing.capture_logs() as logged:
        mocked.get(QUERY, **_answer(keyset, 200, _transaction(keyset, trade_state=trade_state, **{field: other}),
                                    signed=True))
        with pytest.raises(errors.WechatRetryable) as info:
            await client.query(NO)
    assert field in str(info.value)
    [entry] = [entry for entry in logged if entry["event"] == "alert.query_mismatch"]
    assert entry["log_level"] == "error" and entry["out_trade_no"] == NO and entry["fields"] == [field]


@pytest.mark.parametrize("field", ["mchid", "appid"])
async def test_a_final_query_answer_must_name_the_merchant(client: WechatPayClient, keyset: KeySet,
                                                           field: str) -> None:
    # SUCCESS/CLOSED/REFUND change the payment, so they must name us as notifications must; a NOTPAY without
    # them changes nothing here (at most a close or a re-entry is sent to WeChat, under our own mchid).
    paid = _transaction(keyset)
    del paid[field]
    unpaid = {"out_trade_no": NO, "trade_state": "NOTPAY", "amount": {"payer_currency": "CNY", "total": 1999}}
    with aioresponses() as mocked:
        mocked.get(QUERY, **_answer(keyset, 200, paid, signed=True))
        mocked.get(QUERY, **_answer(keyset, 200, unpaid, signed=True))
        with pytest.raises(errors.WechatRetryable):
            await client.query(NO)
        txn = await client.query(NO)
    assert txn is not None and txn.trade_state == "NOTPAY"


async def test_a_query_answer_about_our_order_is_believed(client: WechatPayClient, keyset: KeySet) -> None:
    with aioresponses() as mocked:
        mocked.get(QUERY, **_answer(keyset, 200, _transaction(keyset), signed=True))
        txn = await client.query(NO)
    assert txn is not None and (txn.out_trade_no, txn.mchid, txn.appid) == (NO, keyset.mchid, keyset.appid)
