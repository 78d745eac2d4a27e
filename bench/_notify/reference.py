"""Reference notification handlers, each run as its own process like `run.py serve`:

  txn    verify + decrypt + one aiosqlite transaction per request (UPDATE payment + INSERT event), behind a lock
  group  verify + decrypt + the same two statements through payflow's GroupCommitWriter (shared commits)
  nodb   verify + decrypt only: the crypto + HTTP ceiling

Crypto comes from payflow.wechat.crypto and the connection from payflow's own `connect()` (WAL,
synchronous=FULL, foreign keys on), so only the handling around them differs from payflow.

    python -m bench._notify.reference MODE DB KEYS_DIR PORT   → logs {"event": "serve.listening", ...} on stderr
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import pathlib
import signal
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import aiosqlite  # noqa: E402
from aiohttp import web  # noqa: E402

from payflow import devkeys  # noqa: E402
from payflow.store.group_commit import GroupCommitWriter  # noqa: E402
from payflow.store.sqlite_schema import connect, to_json, ts  # noqa: E402
from payflow.wechat import crypto  # noqa: E402

MODES = ("txn", "group", "nodb")
_UPDATE = ("UPDATE payments SET state = 'notified', version = version + 1, transaction_id = ?, paid_amount = ?, "
           "paid_at = ?, updated_at = ? WHERE out_trade_no = ? AND state = 'prepaid' AND version = 2")
_EVENT = ("INSERT INTO order_events (out_trade_no, from_state, to_state, trigger, source, detail, at) "
          "VALUES (?, 'prepaid', 'notified', 'pay', 'notify', ?, ?)")


class Stale(Exception):
    """The compare-and-set found the payment no longer `prepaid` v2."""


async def _apply(db: aiosqlite.Connection, txn: dict[str, Any]) -> None:
    now = ts(dt.datetime.now(dt.UTC))
    paid_at = ts(dt.datetime.fromisoformat(txn["success_time"]))
    cursor = await db.execute(_UPDATE, (txn["transaction_id"], txn["amount"]["total"], paid_at, now,
                                        txn["out_trade_no"]))
    if cursor.rowcount != 1:
        raise Stale(txn["out_trade_no"])
    await db.execute(_EVENT, (txn["out_trade_no"], to_json({"transaction_id": txn["transaction_id"]}), now))


def make_app(mode: str, db: aiosqlite.Connection | None, keys: devkeys.KeySet) -> web.Application:
    platform_keys = {keys.pub_key_id: keys.platform_public_key}
    apiv3_key = keys.apiv3_key
    lock = asyncio.Lock()
    writer = GroupCommitWriter(db) if mode == "group" and db is not None else None

    async def per_transaction(txn: dict[str, Any]) -> None:
        assert db is not None
        async with lock:  # one connection: one transaction at a time
            await db.execute("BEGIN IMMEDIATE")
            try:
                await _apply(db, txn)
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

    async def notify(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            crypto.verify_signed_message(request.headers, body, platform_keys, now=time.time())
            resource = json.loads(body)["resource"]
            txn = json.loads(crypto.aead_decrypt(apiv3_key, resource["nonce"], resource.get("associated_data"),
                                                 resource["ciphertext"]))
        except (crypto.CryptoError, ValueError, KeyError, TypeError) as exc:
            return web.json_response({"code": "FAIL", "message": str(exc)}, status=401)
        try:
            if writer is not None:
                await writer.submit(lambda conn: _apply(conn, txn))
            elif mode == "txn":
                await per_transaction(txn)
        except Stale:
            return web.json_response({"code": "FAIL", "message": "stale"}, status=409)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/v1/wechat/notify", notify)
    if writer is not None:
        app.on_cleanup.append(lambda _: writer.close())
    return app


async def serve(mode: str, db_path: str, keys_dir: str, port: int) -> None:
    keys = devkeys.load_keyset(keys_dir)
    db = await connect(db_path) if mode != "nodb" else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(make_app(mode, db, keys), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        addresses = [f"{a[0]}:{a[1]}" for a in runner.addresses]
        print(json.dumps({"event": "serve.listening", "addresses": addresses, "mode": mode}), file=sys.stderr,
              flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()
        if db is not None:
            await db.close()


def main(argv: list[str]) -> int:
    mode, db_path, keys_dir, port = argv
    if mode not in MODES:
        print(f"mode must be one of {MODES}", file=sys.stderr)
        return 2
    asyncio.run(serve(mode, db_path, keys_dir, int(port)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
