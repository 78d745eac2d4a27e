"""SQLite-only behaviour: pragmas, the due index, schema versions."""

from __future__ import annotations

import datetime as dt
import pathlib
import sqlite3

import pytest

from payflow import errors
from payflow.store import open_store
from payflow.store.sqlite import MIGRATIONS
from payflow.store.sqlite_schema import from_ts, ts


def _plan(path: pathlib.Path, sql: str) -> str:
    with sqlite3.connect(path) as db:
        return " | ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}"))


async def test_wal_full_sync_and_schema_version(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "p.db"
    store = await open_store(f"sqlite:///{path}")
    try:
        async with store._writer.execute("PRAGMA synchronous") as cursor:  # type: ignore[attr-defined]
            assert (await cursor.fetchone())[0] == 2  # FULL
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
    with pytest.raises(errors.StoreUnavailable):
        await open_store(f"sqlite:///{tmp_path / 'missing-dir' / 'p.db'}")


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
