from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from payflow import errors
from payflow.app import create_app
from payflow.settings import Settings
from payflow.store import PaymentStore
from tests.conftest import ADMIN_TOKEN, API_TOKEN
from tests.fakes import FakeWechat

API = {"Authorization": f"Bearer {API_TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BODY = {"order_id": "order-1", "amount": 1999, "description": "Coffee beans", "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"}


async def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert "Traceback" not in json.dumps(body)
    return body["error"]


async def test_create_then_get(client: TestClient) -> None:
    response = await client.post("/v1/payments", json={**BODY, "attach": "cart-7"}, headers=API)
    assert response.status == 201
    created = await response.json()
    assert set(created) == {"out_trade_no", "order_id", "state", "amount", "paid", "transaction_id", "paid_at",
                            "expires_at", "trade_type", "prepay_id", "pay_params"}
    assert created["state"] == "prepaid" and created["amount"] == 1999 and created["paid"] is False
    assert set(created["pay_params"]) == {"appId", "timeStamp", "nonceStr", "package", "signType", "paySign"}
    assert created["pay_params"]["package"] == f"prepay_id={created['prepay_id']}"
    assert response.headers["X-Request-Id"]

    response = await client.get(f"/v1/payments/{created['out_trade_no']}", headers=API)
    assert response.status == 200
    view = await response.json()
    assert view == {**{k: created[k] for k in ("out_trade_no", "order_id", "state", "amount", "paid",
                                               "transaction_id", "paid_at", "expires_at", "trade_type")},
                    "refunded_amount": 0}


async def test_idempotent_create_and_conflict(client: TestClient) -> None:
    first = await (await client.post("/v1/payments", json=BODY, headers=API)).json()
    again = await client.post("/v1/payments", json=BODY, headers=API)
    assert again.status == 200 and (await again.json())["out_trade_no"] == first["out_trade_no"]
    conflict = await client.post("/v1/payments", json={**BODY, "amount": 1}, headers=API)
    error = await _error(conflict, 409, "conflict")
    assert "amount" in error["message"]


async def test_events_need_the_admin_token(client: TestClient) -> None:
    created = await (await client.post("/v1/payments", json=BODY, headers=API)).json()
    path = f"/v1/payments/{created['out_trade_no']}/events"
    await _error(await client.get(path, headers=API), 401, "unauthorized")
    response = await client.get(path, headers=ADMIN)
    assert response.status == 200
    events = (await response.json())["events"]
    assert [(e["from"], e["to"], e["trigger"], e["source"]) for e in events] == [
        (None, "created", "create", "api"), ("created", "prepaid", "prepay", "api")]


async def test_placement_outcomes_map_to_503_and_502(client: TestClient, wechat: FakeWechat) -> None:
    wechat.outcomes = [errors.WechatRetryable("timeout"),
                       errors.WechatFinal("openid invalid", wechat_code="PARAM_ERROR", status=400)]
    await _error(await client.post("/v1/payments", json=BODY, headers=API), 503, "wechat_unavailable")
    error = await _error(await client.post("/v1/payments", json={**BODY, "order_id": "o2"}, headers=API),
                         502, "wechat_rejected")
    assert error["wechat_code"] == "PARAM_ERROR"


async def test_health_and_readiness(client: TestClient, sqlite_store: PaymentStore) -> None:
    assert (await client.get("/healthz")).status == 200
    assert await (await client.get("/readyz")).json() == {"status": "ready"}


async def test_readiness_fails_when_the_store_is_gone(aiohttp_client: Any, settings: Settings) -> None:
    from payflow.store import open_store

    store = await open_store(settings.database_url)
    client = await aiohttp_client(create_app(settings, store=store))
    await store.close()
    await _error(await client.get("/readyz"), 503, "store_unavailable")


async def test_request_id_is_echoed(client: TestClient) -> None:
    response = await client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert response.headers["X-Request-Id"] == "abc-123"
    response = await client.get("/healthz", headers={"X-Request-Id": "bad id\twith junk"})
    assert response.headers["X-Request-Id"] != "bad id\twith junk"


# --- bad input: a clear 4xx JSON error, never a traceback, nothing stored ---

@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Bearer wrong"}, 401, "unauthorized"),
        ({"Authorization": f"Basic {API_TOKEN}"}, 401, "unauthorized"),
        ({"Authorization": "Bearer "}, 401, "unauthorized"),
    ],
)
async def test_tokens(client: TestClient, headers: dict[str, str], status: int, code: str) -> None:
    await _error(await client.post("/v1/payments", json=BODY, headers=headers), status, code)
    await _error(await client.get("/v1/payments/ABCDEF1234", headers=headers), status, code)


async def test_admin_token_also_opens_the_api(client: TestClient) -> None:
    assert (await client.post("/v1/payments", json=BODY, headers=ADMIN)).status == 201


async def test_unconfigured_tokens_open_nothing(
    aiohttp_client: Any, settings: Settings, sqlite_store: PaymentStore
) -> None:
    import dataclasses

    app = create_app(dataclasses.replace(settings, api_token=None, admin_token=None), store=sqlite_store)
    client = await aiohttp_client(app)
    await _error(await client.get("/v1/payments/ABCDEF1234", headers={"Authorization": "Bearer "}), 401,
                 "unauthorized")
    await _error(await client.get("/v1/payments/ABCDEF1234", headers=API), 401, "unauthorized")


async def test_malformed_json(client: TestClient) -> None:
    json_type = {**API, "Content-Type": "application/json"}
    response = await client.post("/v1/payments", data=b'{"order_id": ', headers=json_type)
    await _error(response, 400, "invalid_json")
    response = await client.post("/v1/payments", data=b"\xff\xfe", headers={**API, "Content-Type": "application/json"})
    await _error(response, 400, "invalid_json")
    await _error(await client.post("/v1/payments", json=[BODY], headers=API), 400, "invalid_json")


async def test_wrong_content_type(client: TestClient) -> None:
    response = await client.post("/v1/payments", data=json.dumps(BODY), headers={**API, "Content-Type": "text/plain"})
    await _error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"order_id": None}, "order_id"),
        ({"amount": None}, "amount"),
        ({"description": None}, "description"),
        ({"openid": None}, "openid"),
        ({"order_id": 17}, "order_id"),
        ({"order_id": ""}, "order_id"),
        ({"amount": "1999"}, "amount"),
        ({"amount": 19.99}, "amount"),
        ({"amount": 0}, "amount"),
        ({"amount": -5}, "amount"),
        ({"amount": True}, "amount"),
        ({"amount": 2**31}, "amount"),
        ({"description": "x" * 128}, "description"),
        ({"description": "支" * 43}, "description"),  # 129 bytes: WeChat counts UTF-8 bytes
        ({"attach": "支" * 42 + "xxx"}, "attach"),  # 129 bytes
        ({"description": "Coffee\x85beans"}, "description"),  # a C1 control
        ({"description": "Coffee \u202eesnaeb"}, "description"),  # a bidi override
        ({"attach": "order \u2066x\u2069"}, "attach"),  # a bidi isolate
        ({"description": "Coffee ☕ beans \U0001f600"}, "description"),  # above U+FFFF: WeChat refuses it
        ({"description": ["Coffee"]}, "description"),
        ({"attach": {"a": 1}}, "attach"),
        ({"openid": "a\nb"}, "openid"),
        ({"out_trade_no": "abc12"}, "out_trade_no"),
        ({"out_trade_no": "x" * 33}, "out_trade_no"),
        ({"out_trade_no": "has space1"}, "out_trade_no"),
        ({"out_trade_no": "中文订单号123"}, "out_trade_no"),
        ({"expires_in": 10}, "expires_in"),
        ({"expires_in": "1h"}, "expires_in"),
        ({"ammount": 1999}, "ammount"),
        ({"trade_type": "qr"}, "trade_type"),
        ({"trade_type": ["native"]}, "trade_type"),
        ({"trade_type": "miniprogram", "openid": None}, "openid"),
        ({"trade_type": "native"}, "openid"),  # another product's field is refused, not ignored
        ({"trade_type": "app", "openid": None, "h5_type": "iOS"}, "h5_type"),
        ({"trade_type": "h5", "openid": None, "h5_type": "iOS"}, "payer_client_ip"),
        ({"trade_type": "h5", "openid": None, "payer_client_ip": "203.0.113.7"}, "h5_type"),
        ({"trade_type": "h5", "openid": None, "payer_client_ip": "300.1.1.1", "h5_type": "iOS"}, "payer_client_ip"),
        ({"trade_type": "h5", "openid": None, "payer_client_ip": "203.0.113.7", "h5_type": "ios"}, "h5_type"),
        ({"payer_client_ip": "203.0.113.7"}, "payer_client_ip"),  # jsapi has no scene
    ],
)
async def test_invalid_fields(
    client: TestClient, sqlite_store: PaymentStore, change: dict[str, Any], field: str
) -> None:
    body = {**BODY, **change}
    body = {k: v for k, v in body.items() if not (v is None and k in change)}
    error = await _error(await client.post("/v1/payments", json=body, headers=API), 422, "invalid_request")
    assert error["field"] == field
    assert await sqlite_store.get_by_order_id(str(body.get("order_id"))) is None


@pytest.mark.parametrize(("product", "answer"), [
    ({"trade_type": "native"}, "code_url"),
    ({"trade_type": "h5", "payer_client_ip": "2001:db8::7", "h5_type": "Wap"}, "h5_url"),
    ({"trade_type": "app"}, "app_params"),
    ({"trade_type": "miniprogram", "openid": "oMini"}, "pay_params"),
])
async def test_each_product_answers_what_its_front_end_needs(
    client: TestClient, product: dict[str, Any], answer: str
) -> None:
    body = {k: v for k, v in BODY.items() if k != "openid"} | product
    response = await client.post("/v1/payments", json=body, headers=API)
    assert response.status == 201
    created = await response.json()
    assert created["trade_type"] == product["trade_type"] and created[answer]
    assert {"pay_params", "code_url", "h5_url", "app_params"} & set(created) == {answer}


async def test_description_and_attach_up_to_wechats_byte_limits_are_fine(client: TestClient) -> None:
    body = {**BODY, "description": "支" * 42 + "x", "attach": "支" * 42 + "xx"}  # 127 and 128 bytes
    response = await client.post("/v1/payments", json=body, headers=API)
    assert response.status == 201
    assert (await response.json())["order_id"] == body["order_id"]


async def test_body_over_the_limit(client: TestClient, settings: Settings) -> None:
    big = {**BODY, "attach": "x" * (settings.max_body_bytes + 10)}
    await _error(await client.post("/v1/payments", json=big, headers=API), 413, "payload_too_large")

    async def chunks() -> Any:  # no Content-Length: the limit is enforced while reading
        yield b'{"order_id": "' + b"x" * (settings.max_body_bytes + 10) + b'"}'

    response = await client.post("/v1/payments", data=chunks(), headers={**API, "Content-Type": "application/json"})
    await _error(response, 413, "payload_too_large")


async def test_unknown_payment_and_bad_path(client: TestClient) -> None:
    await _error(await client.get("/v1/payments/NOPE000001", headers=API), 404, "not_found")
    await _error(await client.get("/v1/payments/abc", headers=API), 422, "invalid_request")
    await _error(await client.get("/v1/nothing-here", headers=API), 404, "not_found")
    await _error(await client.delete("/v1/payments", headers=API), 405, "method_not_allowed")


async def test_a_crash_answers_500_without_a_trace(
    aiohttp_client: Any, settings: Settings, sqlite_store: PaymentStore
) -> None:
    class Exploding(FakeWechat):
        async def place(self, order: Any) -> Any:
            raise RuntimeError("secret internals")

    client = await aiohttp_client(create_app(settings, store=sqlite_store, wechat=Exploding()))
    error = await _error(await client.post("/v1/payments", json=BODY, headers=API), 500, "internal")
    assert "secret internals" not in error["message"]


async def test_app_owns_the_store_it_opened(aiohttp_client: Any, settings: Settings) -> None:
    app = create_app(settings)
    client = await aiohttp_client(app)
    assert (await client.get("/readyz")).status == 200
    await client.close()
    from payflow.http import keys

    with pytest.raises(errors.StoreUnavailable):
        await app[keys.STORE].ping()
    assert isinstance(app, web.Application)


async def test_a_deployment_without_wechat_keys_says_what_to_configure(
    aiohttp_client: Any, sqlite_store: PaymentStore,
) -> None:
    bare = Settings(api_token=API_TOKEN, admin_token=ADMIN_TOKEN, notify_url="https://pay.example.com/notify")
    client = await aiohttp_client(create_app(bare, store=sqlite_store, run_sweeper=False))
    body = await _error(await client.post("/v1/payments", json=BODY, headers=API), 503, "not_configured")
    assert "PAYFLOW_WECHAT_MCHID" in body["message"]
    stored = await sqlite_store.get_by_order_id("order-1")
    assert stored is not None and stored.state.value == "created"  # kept: placed once WeChat is configured

    response = await client.post("/v1/wechat/notify", data=b"{}", headers={"Content-Type": "application/json"})
    assert response.status == 500  # WeChat delivers again later
    answer = await response.json()
    assert answer["code"] == "FAIL" and "PAYFLOW_WECHAT_PUBKEY_ID" in answer["message"]
