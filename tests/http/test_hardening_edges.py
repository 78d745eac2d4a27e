"""Edges a hostile or broken client reaches: undecodable headers, and store failures whose driver messages
(addresses, paths) must stay in the log."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import structlog.testing
from aiohttp.test_utils import TestClient

from payflow import errors
from payflow.clock import FakeClock
from payflow.devkeys import KeySet
from payflow.service import NewPayment, PaymentService
from payflow.store import PaymentStore
from tests import notifications as wx
from tests.conftest import API_TOKEN

DRIVER_MESSAGE = "PostgreSQL: ConnectionRefusedError: connection to 10.1.2.3:5432 refused (host db-7.internal)"


async def _raw(client: TestClient, head: bytes) -> tuple[int, dict[str, Any]]:
    """Send `head` as it is (no client library re-encodes it); the status and the JSON body."""
    reader, writer = await asyncio.open_connection(str(client.host), client.port)
    try:
        writer.write(head)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, _, rest = answer.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(body)


@pytest.mark.parametrize("token", [b"\xff\xfe", b"api-\xc3", b"\xed\xa0\x80", "\u4e2d".encode()],
                         ids=["invalid", "truncated", "surrogate", "utf8"])
async def test_an_undecodable_authorization_header_is_401(client: TestClient, token: bytes) -> None:
    head = (b"GET /v1/payments/ABCDEF1234 HTTP/1.1\r\nHost: payflow\r\nConnection: close\r\n"
            b"Authorization: Bearer " + token + b"\r\n\r\n")
    with structlog.testing.capture_logs() as logged:
        status, body = await _raw(client, head)
    assert status == 401 and body["error"]["code"] == "unauthorized"
    assert not [e for e in logged if e["event"] == "request.crashed"]


async def test_an_undecodable_scheme_is_401(client: TestClient) -> None:
    status, body = await _raw(client, b"GET /v1/payments/ABCDEF1234 HTTP/1.1\r\nHost: payflow\r\n"
                                      b"Connection: close\r\nAuthorization: \xffearer x\r\n\r\n")
    assert status == 401 and body["error"]["code"] == "unauthorized"


async def test_the_right_token_still_passes(client: TestClient) -> None:
    status, body = await _raw(client, b"GET /v1/payments/ABCDEF1234 HTTP/1.1\r\nHost: payflow\r\n"
                                      b"Connection: close\r\nAuthorization: Bearer " + API_TOKEN.encode()
                                      + b"\r\n\r\n")
    assert status == 404 and body["error"]["code"] == "not_found"


async def _unavailable(*args: Any, **kwargs: Any) -> Any:
    raise errors.StoreUnavailable(DRIVER_MESSAGE)


def _logged_detail(logged: list[dict[str, Any]]) -> bool:
    return any(e["event"] == "request.failed" and "10.1.2.3:5432" in e["message"] for e in logged)


async def test_readyz_says_store_unavailable_and_logs_the_detail(
    client: TestClient, sqlite_store: PaymentStore, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sqlite_store, "ping", _unavailable)
    with structlog.testing.capture_logs() as logged:
        response = await client.get("/readyz")
        text = await response.text()
    assert response.status == 503
    assert json.loads(text) == {"error": {"code": "store_unavailable", "message": "store unavailable"}}
    assert "10.1.2.3" not in text and "db-7" not in text
    assert _logged_detail(logged)


async def test_api_answers_hide_the_driver_message(
    client: TestClient, sqlite_store: PaymentStore, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sqlite_store, "get", _unavailable)
    with structlog.testing.capture_logs() as logged:
        response = await client.get("/v1/payments/ABCDEF1234", headers={"Authorization": f"Bearer {API_TOKEN}"})
        text = await response.text()
    assert response.status == 503 and "10.1.2.3" not in text
    assert json.loads(text)["error"] == {"code": "store_unavailable", "message": "store unavailable"}
    assert _logged_detail(logged)


async def test_the_notify_fail_body_hides_the_driver_message(
    client: TestClient, keyset: KeySet, clock: FakeClock, service: PaymentService, sqlite_store: PaymentStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    created = await service.create_payment(NewPayment("order-1", 1999, "Beans", "oPayer"))
    monkeypatch.setattr(sqlite_store, "decide", _unavailable)
    body = wx.envelope(keyset, wx.transaction(keyset, created.payment.out_trade_no, 1999), notification_id="EV-1")
    headers = wx.signed_headers(keyset, body, timestamp=int(clock.now().timestamp()))
    with structlog.testing.capture_logs() as logged:
        response = await client.post("/v1/wechat/notify", data=body, headers=headers)
        text = await response.text()
    assert response.status == 500  # WeChat delivers again
    assert json.loads(text) == {"code": "FAIL", "message": "store unavailable"}
    assert _logged_detail(logged)
