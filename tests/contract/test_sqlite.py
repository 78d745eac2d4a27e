"""SQLite-only behaviour: pragmas, the due index, schema versions."""

from __future__ import annotations

import contextlib
import datetime as dt
import pathlib
import sqlite3
import threading

import pytest

from payflow import errors
from payflow.store import open_store
from payflow.store.sqlite import MIGRATIONS, SqliteStore
from payflow.store.sqlite_schema import from_ts, ts


def _plan(path: pathlib.Path, sql: str) -> str:
    with sqlite3.connect(path) as db:
        return " | ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}"))


def _threads() -> set[threading.Thread]:
    # The loop's default executor (asyncio_N) is the loop's, shut down with it, not the store's.
    return {t for t in threading.enumerate() if not t.name.startswith("asyncio_")}


async def test_wal_full_sync_and_schema_version(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "p.db"
    store = await open_store(f"sqlite:///{path}")
    assert isinstance(store, SqliteStore)
    try:
        # Per-connection settings, so read on the writer's own connection (through the public submit()).
        pragmas = await store.writes.submit(lambda db: [db.execute(f"PRAGMA {name}").fetchone()[0] for name in (
            "synchronous", "busy_timeout", "foreign_keys", "cache_size")])
        assert pragmas == [2, 10000, 1, -16384]  # FULL
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


async def test_due_scan_uses_the_partial_index(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "p.db"
    await (await open_store(f"sqlite:///{path}")).close()
    plan = _plan(path, "SELECT out_trade_no FROM payments WHERE next_attempt_at IS NOT NULL "
                       "AND next_attempt_at <= '2026' ORDER BY next_attempt_at LIMIT 10")
    # SEARCH (a range on the index), not SCAN (every row): the cost follows what is due.
    assert plan.startswith("SEARCH payments USING") and "INDEX payments_due" in plan, plan


async def test_the_v3_rebuild_keeps_every_row_and_reference(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "p.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("BEGIN")
    for statement in (*MIGRATIONS[0], *MIGRATIONS[1]):  # a store as payflow v2 left it
        db.execute(statement)
    db.execute("PRAGMA user_version = 2")
    db.execute("INSERT INTO payments VALUES ('T1', 'order-1', 100, 'CNY', 'd', 'o', NULL, 'prepaid', 2, 'evt_1', "
               "'wx1', NULL, NULL, NULL, '2026-01-01', '2026-01-01', 0, NULL, '2026-01-01', '2026-01-01')")
    db.execute("INSERT INTO order_events (out_trade_no, to_state, trigger, source, detail, at) "
               "VALUES ('T1', 'prepaid', 'prepay', 'api', '{}', '2026-01-01')")
    db.execute("COMMIT")
    db.close()
    store = await open_store(f"sqlite:///{path}")
    try:
        payment = await store.get("T1")
        assert payment is not None and (payment.order_id, payment.prepay_id, payment.version) == ("order-1", "wx1", 2)
        assert [e.trigger for e in await store.events("T1")] == ["prepay"]
        assert await store.get_by_order_id("order-1") == payment
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'payments' "
                                                "AND type = 'index' AND sql IS NOT NULL")}
        assert indexes == {"payments_due", "payments_paid_at", "payments_live_order_id", "payments_by_order_id",
                           "payments_by_transaction_id"}


async def test_the_v5_rebuild_keeps_rows_events_and_their_ids_and_allows_refunded(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "p.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA foreign_keys = OFF")
    db.execute("BEGIN")
    for statement in (stmt for migration in MIGRATIONS[:4] for stmt in migration):  # as payflow v4 left it
        db.execute(statement)
    db.execute("PRAGMA user_version = 4")
    db.execute("INSERT INTO payments (out_trade_no, order_id, amount, currency, description, openid, state, version, "
               "event_id, transaction_id, paid_at, paid_amount, expires_at, attempts, created_at, updated_at, "
               "trade_type, appid) VALUES ('T1', 'order-1', 100, 'CNY', 'd', 'o', 'synced', 3, 'evt_1', '4200', "
               "'2026-01-01', 100, '2026-01-01', 0, '2026-01-01', '2026-01-01', 'native', 'wx1')")
    for trigger in ("create", "pay", "sync"):
        db.execute("INSERT INTO order_events (out_trade_no, to_state, trigger, source, detail, at) "
                   "VALUES ('T1', 'synced', ?, 'api', '{\"k\": 1}', '2026-01-01')", (trigger,))
    with pytest.raises(sqlite3.IntegrityError):  # v4's CHECK knows no `refunded`
        db.execute("UPDATE payments SET state = 'refunded'")
    db.execute("COMMIT")
    db.close()
    store = await open_store(f"sqlite:///{path}")
    try:
        payment = await store.get("T1")
        assert payment is not None
        assert (payment.trade_type, payment.appid, payment.paid_amount) == ("native", "wx1", 100)
        events = await store.events("T1")
        assert [(e.id, e.trigger, e.detail) for e in events] == [(1, "create", {"k": 1}), (2, "pay", {"k": 1}),
                                                                 (3, "sync", {"k": 1})]
        from payflow.states import Source, State, Trigger

        refunded = await store.transition(payment, State.REFUNDED, Trigger.REFUND, source=Source.SWEEPER,
                                          at=dt.datetime(2026, 1, 2, tzinfo=dt.UTC), detail={"refunded": 100})
        assert refunded.state is State.REFUNDED
        assert (await store.events("T1"))[-1].id == 4  # the sequence went on from the copied ids
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        with pytest.raises(sqlite3.IntegrityError):
            db.execute("UPDATE payments SET state = 'bogus'")


async def test_a_newer_schema_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "p.db"
    await (await open_store(f"sqlite:///{path}")).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(errors.StoreUnavailable, match="newer"):
        await open_store(f"sqlite:///{path}")


async def test_unsupported_urls_are_refused() -> None:
    with pytest.raises(errors.SettingsError):
        await open_store("mysql://localhost/x")


async def test_unopenable_path_is_a_store_error(tmp_path: pathlib.Path) -> None:
    before = _threads()
    with pytest.raises(errors.StoreUnavailable):
        await open_store(f"sqlite:///{tmp_path / 'missing-dir' / 'p.db'}")
    assert _threads() == before  # the writer's thread did not outlive the failed open


async def test_a_refused_schema_leaves_no_thread_or_lock_behind(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "p.db"
    await (await open_store(f"sqlite:///{path}")).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    before = _threads()
    with pytest.raises(errors.StoreUnavailable, match="newer"):
        await open_store(f"sqlite:///{path}")
    assert _threads() == before
    with contextlib.closing(sqlite3.connect(path, timeout=0, isolation_level=None)) as db:
        db.execute("BEGIN IMMEDIATE")  # the migration's write lock was released
        db.execute("ROLLBACK")


async def test_close_stops_every_thread_the_store_started(tmp_path: pathlib.Path) -> None:
    before = _threads()
    store = await open_store(f"sqlite:///{tmp_path / 'p.db'}")
    started = _threads() - before
    assert len(started) == 3  # the writer's, the reader's and the stats reader's (aiosqlite)
    await store.close()
    for thread in started:  # aiosqlite's worker ends just after close() returns: wait for it, boundedly
        thread.join(timeout=10)
    assert _threads() == before
    await store.close()  # twice is harmless


@pytest.mark.parametrize("moment", [
    dt.datetime(2026, 11, 27, 3, 4, 5, 123456, tzinfo=dt.UTC),
    dt.datetime(2026, 1, 1, tzinfo=dt.UTC),  # zero microseconds keep their six digits
    dt.datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),  # a three-digit year is zero-padded
    dt.datetime(2026, 11, 27, 4, 0, tzinfo=dt.timezone(dt.timedelta(hours=8))),  # another zone: shown in UTC
])
def test_stored_times_are_fixed_width_utc_isoformat(moment: dt.datetime) -> None:
    assert ts(moment) == moment.astimezone(dt.UTC).isoformat(timespec="microseconds")
    assert from_ts(ts(moment)) == moment


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        ts(dt.datetime(2026, 11, 27))
