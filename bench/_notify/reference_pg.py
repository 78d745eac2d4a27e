"""Reference notification handlers on PostgreSQL (asyncpg), each run as its own process like `run.py serve`:

  txn  verify + decrypt + one pooled transaction per request: read the payment, compare-and-set it
       `prepaid` → `notified`, insert the event row, insert the notification row (its unique id is the
       dedupe: a notification already recorded rolls the transaction back), commit. Six round trips:
       BEGIN, SELECT, UPDATE, INSERT, INSERT, COMMIT.
  cte  verify + decrypt + the same logical work as one statement (data-modifying CTEs; the decision is
       written in SQL): one round trip, committed on its own.

They write payflow's own tables (the schema `run.py serve` migrates), with payflow's columns, and the
notification's decrypted resource as received, like payflow. The decision is the benchmark's case only (a
`prepaid` payment of the right amount is paid; anything else is left alone), so these are yardsticks, not
a second implementation. The pool is configured as payflow's is (same size, no reset query on release).
Crypto comes from payflow.wechat.crypto, so it costs exactly what it costs payflow.

    python -m bench._notify.reference_pg MODE DSN KEYS_DIR PORT POOL_SIZE
        → logs {"event": "serve.listening", ...} on stderr
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

import asyncpg  # noqa: E402
from aiohttp import web  # noqa: E402

from payflow import devkeys  # noqa: E402
from payflow.wechat import crypto  # noqa: E402

MODES = ("txn", "cte")

_READ = "SELECT state, version, amount FROM payments WHERE out_trade_no = $1"
_CAS = ("UPDATE payments SET state = 'notified', version = version + 1, transaction_id = $1, paid_amount = $2, "
        "paid_at = $3, updated_at = $4 WHERE out_trade_no = $5 AND state = 'prepaid' AND version = $6")
_EVENT = ("INSERT INTO order_events (out_trade_no, from_state, to_state, trigger, source, detail, at) "
          "VALUES ($1, 'prepaid', 'notified', 'pay', 'notify', $2::text::jsonb, $3)")
_NOTIFICATION = ("INSERT INTO notifications (notification_id, out_trade_no, event_type, outcome, resource, "
                 "received_at) VALUES ($1, $2, $3, $4, $5::text::jsonb, $6) ON CONFLICT (notification_id) DO NOTHING")
# The same in one statement. The UPDATE is the compare-and-set (its WHERE is re-checked on the row a concurrent
# writer left); the notification row goes in whatever the outcome, and a duplicate id inserts nothing.
_ONE_STATEMENT = """
WITH paid AS (
    UPDATE payments SET state = 'notified', version = version + 1, transaction_id = $1, paid_amount = $2,
        paid_at = $3, updated_at = $4
    WHERE out_trade_no = $5 AND state = 'prepaid' AND amount = $2
      AND NOT EXISTS (SELECT 1 FROM notifications WHERE notification_id = $6)
    RETURNING out_trade_no),
event AS (
    INSERT INTO order_events (out_trade_no, from_state, to_state, trigger, source, detail, at)
    SELECT out_trade_no, 'prepaid', 'notified', 'pay', 'notify', $7::text::jsonb, $4 FROM paid),
noted AS (
    INSERT INTO notifications (notification_id, out_trade_no, event_type, outcome, resource, received_at)
    SELECT $6, $5, $8, CASE WHEN EXISTS (SELECT 1 FROM paid) THEN 'accepted' ELSE 'already_paid' END,
           $9::text::jsonb, $4
    ON CONFLICT (notification_id) DO NOTHING RETURNING outcome)
SELECT (SELECT outcome FROM noted)
"""


class Duplicate(Exception):
    """The notification was recorded before: nothing of this one is kept."""


async def _no_reset(_: asyncpg.Connection) -> None:
    """Released connections keep their session as is (payflow's pool does the same): no query per release."""


class Handler:
    def __init__(self, pool: asyncpg.Pool, mode: str) -> None:
        self.pool = pool
        self.apply = self._transaction if mode == "txn" else self._one_statement

    async def _transaction(self, note: dict[str, Any], txn: dict[str, Any], plaintext: str) -> str:
        now, paid_at, detail = _facts(txn)
        no = txn["out_trade_no"]
        async with self.pool.acquire() as db, db.transaction():
            row = await db.fetchrow(_READ, no)
            outcome = "unknown_payment" if row is None else "already_paid"
            if row is not None and row["state"] == "prepaid" and row["amount"] == txn["amount"]["total"]:
                status = await db.execute(_CAS, txn["transaction_id"], txn["amount"]["total"], paid_at, now, no,
                                          row["version"])
                if status == "UPDATE 1":
                    await db.execute(_EVENT, no, detail, now)
                    outcome = "accepted"
            status = await db.execute(_NOTIFICATION, note["id"], no, note["event_type"], outcome, plaintext, now)
            if status != "INSERT 0 1":
                raise Duplicate  # rolls back whatever this transaction wrote
        return outcome

    async def _one_statement(self, note: dict[str, Any], txn: dict[str, Any], plaintext: str) -> str:
        now, paid_at, detail = _facts(txn)
        outcome = await self.pool.fetchval(_ONE_STATEMENT, txn["transaction_id"], txn["amount"]["total"], paid_at,
                                           now, txn["out_trade_no"], note["id"], detail, note["event_type"],
                                           plaintext)
        if outcome is None:
            raise Duplicate
        return str(outcome)


def _facts(txn: dict[str, Any]) -> tuple[dt.datetime, dt.datetime, str]:
    detail = json.dumps({"transaction_id": txn["transaction_id"]}, sort_keys=True)
    return dt.datetime.now(dt.UTC), dt.datetime.fromisoformat(txn["success_time"]), detail


def make_app(handler: Handler, keys: devkeys.KeySet) -> web.Application:
    platform_keys = {keys.pub_key_id: keys.platform_public_key}
    apiv3_key = keys.apiv3_key

    async def notify(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            crypto.verify_signed_message(request.headers, body, platform_keys, now=time.time())
            note = json.loads(body)
            resource = note["resource"]
            plaintext = crypto.aead_decrypt(apiv3_key, resource["nonce"], resource.get("associated_data"),
                                            resource["ciphertext"]).decode()
            txn = json.loads(plaintext)
        except (crypto.CryptoError, ValueError, KeyError, TypeError) as exc:
            return web.json_response({"code": "FAIL", "message": str(exc)}, status=401)
        try:
            await handler.apply(note, txn, plaintext)
        except Duplicate:
            pass  # already recorded: acknowledged again, as WeChat expects
        except (asyncpg.PostgresError, OSError) as exc:
            return web.json_response({"code": "FAIL", "message": type(exc).__name__}, status=503)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/v1/wechat/notify", notify)
    return app


async def serve(mode: str, dsn: str, keys_dir: str, port: int, pool_size: int) -> None:
    keys = devkeys.load_keyset(keys_dir)
    pool = await asyncpg.create_pool(dsn, min_size=pool_size, max_size=pool_size, reset=_no_reset)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(make_app(Handler(pool, mode), keys), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        addresses = [f"{a[0]}:{a[1]}" for a in runner.addresses]
        print(json.dumps({"event": "serve.listening", "addresses": addresses, "mode": mode}), file=sys.stderr,
              flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()
        await pool.close()


def main(argv: list[str]) -> int:
    mode, dsn, keys_dir, port, pool_size = argv
    if mode not in MODES:
        print(f"mode must be one of {MODES}", file=sys.stderr)
        return 2
    asyncio.run(serve(mode, dsn, keys_dir, int(port), int(pool_size)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
