"""Benchmark fixtures: a seeded database of `prepaid` payments and the notifications that pay them.

Payment i is `N{i:012d}` (amount 100 fen) in every database; its notification has the id `bench-{i}`, so
one set of pre-built notifications serves every handler (each handler gets its own copy of the seed).
"""

from __future__ import annotations

import datetime as dt
import json
import pathlib
import secrets
import time

from payflow.devkeys import KeySet
from payflow.store.sqlite import SqliteStore
from payflow.wechat import crypto

AMOUNT = 100
# WeChat sends the Wechatpay-* headers plus these; aiohttp adds Host, Content-Length and the rest.
_EXTRA_HEADERS = {"Content-Type": "application/json", "User-Agent": "Mozilla/4.0"}


def out_trade_no(i: int) -> str:
    return f"N{i:012d}"


async def prefill(path: pathlib.Path, count: int) -> None:
    """`count` payments in `prepaid` (version 2), scheduled far in the future so no sweeper touches them."""
    store = await SqliteStore.open(str(path))
    try:
        now = dt.datetime.now(dt.UTC)
        stamp = now.isoformat(timespec="microseconds")
        expires = (now + dt.timedelta(hours=2)).isoformat(timespec="microseconds")
        far = (now + dt.timedelta(days=365)).isoformat(timespec="microseconds")
        rows = [(out_trade_no(i), f"order-{i}", AMOUNT, "bench", "oBench", f"evt_{i}", f"wx_prepay_{i}",
                 expires, far, stamp, stamp) for i in range(count)]
        await store.writes.submit(lambda db: db.executemany(
            "INSERT INTO payments (out_trade_no, order_id, amount, currency, description, openid, attach, state, "
            "version, event_id, prepay_id, transaction_id, paid_at, paid_amount, expires_at, next_attempt_at, "
            "attempts, lease_token, created_at, updated_at) "
            "VALUES (?, ?, ?, 'CNY', ?, ?, NULL, 'prepaid', 2, ?, ?, NULL, NULL, NULL, ?, ?, 0, NULL, ?, ?)", rows))
    finally:
        await store.close()


def build(keys: KeySet, start: int, count: int) -> list[tuple[bytes, dict[str, str]]]:
    """Notifications for payments start..start+count: body and headers, signed now (valid ±300 s)."""
    stamp = int(time.time())
    built = []
    for i in range(start, start + count):
        resource = {
            "mchid": keys.mchid, "appid": keys.appid, "out_trade_no": out_trade_no(i),
            "transaction_id": f"4200000{i:021d}", "trade_type": "JSAPI", "trade_state": "SUCCESS",
            "trade_state_desc": "支付成功", "bank_type": "OTHERS", "attach": "",
            "success_time": "2026-11-26T20:01:02+08:00", "payer": {"openid": "oBench"},
            "amount": {"total": AMOUNT, "payer_total": AMOUNT, "currency": "CNY", "payer_currency": "CNY"},
        }
        nonce = crypto.nonce_str(12)
        ciphertext = crypto.aead_encrypt(keys.apiv3_key, nonce, "transaction",
                                         json.dumps(resource, ensure_ascii=False).encode())
        body = json.dumps({
            "id": f"bench-{i}", "create_time": "2026-11-26T20:01:03+08:00", "resource_type": "encrypt-resource",
            "event_type": "TRANSACTION.SUCCESS", "summary": "支付成功",
            "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM", "ciphertext": ciphertext,
                         "associated_data": "transaction", "nonce": nonce},
        }, ensure_ascii=False, separators=(",", ":")).encode()
        headers = crypto.sign_response_headers(keys.platform_private_key, keys.pub_key_id, body, timestamp=stamp,
                                               nonce=secrets.token_hex(16))
        built.append((body, {**headers, **_EXTRA_HEADERS}))
    return built
