"""Builds signed, encrypted WeChat notifications for tests, the way WeChat Pay does (WECHATPAY_V3 §6)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from payflow.devkeys import KeySet
from payflow.wechat import crypto


def transaction(keys: KeySet, out_trade_no: str, amount: int, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "mchid": keys.mchid, "appid": keys.appid, "out_trade_no": out_trade_no,
        "transaction_id": f"42000{uuid.uuid4().int % 10**23:023d}", "trade_type": "JSAPI",
        "trade_state": "SUCCESS", "trade_state_desc": "支付成功", "bank_type": "OTHERS", "attach": "",
        "success_time": "2026-11-26T20:01:02+08:00", "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
        "amount": {"total": amount, "payer_total": amount, "currency": "CNY", "payer_currency": "CNY"},
    }
    body.update(overrides)
    return body


def envelope(keys: KeySet, resource: dict[str, Any], *, notification_id: str | None = None,
             event_type: str = "TRANSACTION.SUCCESS") -> bytes:
    nonce = crypto.nonce_str(12)
    ciphertext = crypto.aead_encrypt(keys.apiv3_key, nonce, "transaction",
                                     json.dumps(resource, ensure_ascii=False).encode())
    return json.dumps({
        "id": notification_id or str(uuid.uuid4()), "create_time": "2026-11-26T20:01:03+08:00",
        "resource_type": "encrypt-resource", "event_type": event_type, "summary": "支付成功",
        "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM", "ciphertext": ciphertext,
                     "associated_data": "transaction", "nonce": nonce},
    }, ensure_ascii=False, separators=(",", ":")).encode()


def signed_headers(keys: KeySet, body: bytes, *, timestamp: int, private_key: Any = None,
                   serial: str | None = None) -> dict[str, str]:
    headers = crypto.sign_response_headers(private_key or keys.platform_private_key, serial or keys.pub_key_id,
                                           body, timestamp=timestamp)
    return {**headers, "Content-Type": "application/json"}
