"""Reference notification handlers, each run as its own process like `run.py serve`:

  txn    verify + decrypt + one aiosqlite transaction per request (UPDATE payment + INSERT event), behind a lock
  group  verify + decrypt + the same two statements, group-committed: one writer task hands everything queued
         while the previous commit ran to one thread, which applies it in one transaction (a savepoint per
         request, so a failure is that request's alone) and commits once; each request awaits its own outcome
  nodb   verify + decrypt only: the crypto + HTTP ceiling

Crypto comes from payflow.wechat.crypto, so it costs exactly what it costs payflow. Both databases run
in WAL with synchronous=FULL and foreign keys on, like payflow's store. The group-commit writer is the
bench's own (standard library only), not payflow's: a reference must not move when the code it judges
changes.

    python -m bench._notify.reference MODE DB KEYS_DIR PORT   → logs {"event": "serve.listening", ...} on stderr
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import json
import pathlib
import signal
import sqlite3
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import aiosqlite  # noqa: E402
from aiohttp import web  # noqa: E402

from payflow import devkeys  # noqa: E402
from payflow.wechat import crypto  # noqa: E402

MODES = ("txn", "group", "nodb")
MAX_BATCH = 256
_PRAGMAS = ("PRAGMA busy_timeout = 10000", "PRAGMA journal_mode = WAL", "PRAGMA synchronous = FULL",
            "PRAGMA foreign_keys = ON")
_UPDATE = ("UPDATE payments SET state = 'notified', version = version + 1, transaction_id = ?, paid_amount = ?, "
           "paid_at = ?, updated_at = ? WHERE out_trade_no = ? AND state = 'prepaid' AND version = 2")
_EVENT = ("INSERT INTO order_events (out_trade_no, from_state, to_state, trigger, source, detail, at) "
          "VALUES (?, 'prepaid', 'notified', 'pay', 'notify', ?, ?)")


class Stale(Exception):
    """The compare-and-set found the payment no longer `prepaid` v2."""


def _statements(txn: dict[str, Any]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Parameters of the UPDATE and of the INSERT for one decrypted transaction (payflow's time format)."""
    now = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
    paid_at = dt.datetime.fromisoformat(txn["success_time"]).astimezone(dt.UTC).isoformat(timespec="microseconds")
    detail = json.dumps({"transaction_id": txn["transaction_id"]}, sort_keys=True)
    return ((txn["transaction_id"], txn["amount"]["total"], paid_at, now, txn["out_trade_no"]),
            (txn["out_trade_no"], detail, now))


# --- txn: one aiosqlite transaction per request ---------------------------------------------------


class PerRequest:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db
        self.lock = asyncio.Lock()  # one connection: one transaction at a time

    @classmethod
    async def open(cls, path: str) -> PerRequest:
        db = await aiosqlite.connect(path, isolation_level=None)
        for pragma in _PRAGMAS:
            await db.execute(pragma)
        return cls(db)

    async def apply(self, txn: dict[str, Any]) -> None:
        update, event = _statements(txn)
        async with self.lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                cursor = await self.db.execute(_UPDATE, update)
                if cursor.rowcount != 1:
                    raise Stale(txn["out_trade_no"])
                await self.db.execute(_EVENT, event)
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
            await self.db.execute("COMMIT")

    async def close(self) -> None:
        await self.db.close()


# --- group: group commit ---------------------------------------------------------------------------


def _apply_batch(conn: sqlite3.Connection, txns: list[dict[str, Any]]) -> list[Exception | None]:
    """On the writer thread: every queued request in one transaction, each under its own savepoint."""
    outcomes: list[Exception | None] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for txn in txns:
            update, event = _statements(txn)
            conn.execute("SAVEPOINT request")
            try:
                if conn.execute(_UPDATE, update).rowcount != 1:
                    raise Stale(txn["out_trade_no"])
                conn.execute(_EVENT, event)
            except Exception as exc:  # noqa: BLE001 — this request's failure is its own
                conn.execute("ROLLBACK TO request")
                conn.execute("RELEASE request")
                outcomes.append(exc)
                continue
            conn.execute("RELEASE request")
            outcomes.append(None)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcomes


class GroupCommit:
    def __init__(self, conn: sqlite3.Connection, thread: concurrent.futures.ThreadPoolExecutor) -> None:
        self.conn = conn
        self.thread = thread
        self.queue: asyncio.Queue[tuple[dict[str, Any], asyncio.Future[None]]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: str) -> GroupCommit:
        thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="reference-writer")

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            for pragma in _PRAGMAS:
                conn.execute(pragma)
            return conn

        return cls(await asyncio.get_running_loop().run_in_executor(thread, connect), thread)

    async def apply(self, txn: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        if self.task is None:
            self.task = loop.create_task(self._run(), name="reference-group-commit")
        future: asyncio.Future[None] = loop.create_future()
        self.queue.put_nowait((txn, future))
        await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            while len(batch) < MAX_BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                outcomes = await loop.run_in_executor(self.thread, _apply_batch, self.conn, [t for t, _ in batch])
            except sqlite3.Error as exc:  # nothing committed: nobody is told otherwise
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if outcome is None:
                    future.set_result(None)
                else:
                    future.set_exception(outcome)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self.thread, self.conn.close)
        self.thread.shutdown()


# --- the handler -----------------------------------------------------------------------------------


def make_app(store: PerRequest | GroupCommit | None, keys: devkeys.KeySet) -> web.Application:
    platform_keys = {keys.pub_key_id: keys.platform_public_key}
    apiv3_key = keys.apiv3_key

    async def notify(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            crypto.verify_signed_message(request.headers, body, platform_keys, now=time.time())
            resource = json.loads(body)["resource"]
            txn = json.loads(crypto.aead_decrypt(apiv3_key, resource["nonce"], resource.get("associated_data"),
                                                 resource["ciphertext"]))
        except (crypto.CryptoError, ValueError, KeyError, TypeError) as exc:
            return web.json_response({"code": "FAIL", "message": str(exc)}, status=401)
        if store is not None:
            try:
                await store.apply(txn)
            except Stale:
                return web.json_response({"code": "FAIL", "message": "stale"}, status=409)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/v1/wechat/notify", notify)
    return app


async def serve(mode: str, db_path: str, keys_dir: str, port: int) -> None:
    keys = devkeys.load_keyset(keys_dir)
    store: PerRequest | GroupCommit | None = None
    if mode == "txn":
        store = await PerRequest.open(db_path)
    elif mode == "group":
        store = await GroupCommit.open(db_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(make_app(store, keys), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        addresses = [f"{a[0]}:{a[1]}" for a in runner.addresses]
        print(json.dumps({"event": "serve.listening", "addresses": addresses, "mode": mode}), file=sys.stderr,
              flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()
        if store is not None:
            await store.close()


def main(argv: list[str]) -> int:
    mode, db_path, keys_dir, port = argv
    if mode not in MODES:
        print(f"mode must be one of {MODES}", file=sys.stderr)
        return 2
    asyncio.run(serve(mode, db_path, keys_dir, int(port)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
