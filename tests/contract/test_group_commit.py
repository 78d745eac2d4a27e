"""SQLite group commit: one batch, one fsync, but every write succeeds or fails on its own — and a
process killed mid-batch loses nothing it acknowledged and leaves nothing half-applied."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from payflow import errors
from payflow.states import Source, State, Trigger
from payflow.store import open_store
from payflow.store.sqlite import SqliteStore
from tests import factories
from tests.factories import T0

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
async def store(tmp_path: pathlib.Path) -> SqliteStore:
    store = await open_store(f"sqlite:///{tmp_path / 'gc.db'}")
    assert isinstance(store, SqliteStore)
    yield store  # type: ignore[misc]
    await store.close()


async def test_batch_mates_succeed_and_fail_on_their_own(store: SqliteStore) -> None:
    a, b, c = [await store.create(factories.payment(), source=Source.API, detail={}) for _ in range(3)]
    stale_b = dataclasses.replace(b, version=b.version + 7)
    duplicate = factories.payment(order_id=a.order_id)
    before = store.writes.stats.batches

    def broken(db: object) -> None:
        db.execute("INSERT INTO no_such_table VALUES (1)")  # type: ignore[attr-defined]

    results = await asyncio.gather(
        store.transition(a, State.PREPAID, Trigger.PREPAY, source=Source.API, at=T0, changes={"prepay_id": "wa"}),
        store.transition(stale_b, State.PREPAID, Trigger.PREPAY, source=Source.API, at=T0),
        store.create(duplicate, source=Source.API, detail={}),
        store.writes.submit(broken),
        store.transition(c, State.CLOSED, Trigger.CLOSE, source=Source.API, at=T0),
        return_exceptions=True,
    )
    assert store.writes.stats.batches == before + 1  # queued together, committed together
    assert isinstance(results[0], type(a)) and results[0].state is State.PREPAID
    assert isinstance(results[1], errors.StaleState)
    assert isinstance(results[2], errors.DuplicatePayment)
    assert isinstance(results[3], errors.StoreUnavailable)
    assert isinstance(results[4], type(c)) and results[4].state is State.CLOSED
    assert (await store.get(b.out_trade_no)) == b  # the failed write left no trace ...
    assert [e.trigger for e in await store.events(b.out_trade_no)] == ["create"]
    assert await store.get(duplicate.out_trade_no) is None
    assert [e.trigger for e in await store.events(a.out_trade_no)] == ["create", "prepay"]  # ... its mates landed


def _half_written(db: object) -> None:
    """Changes a row, then fails: only undoing its batch (or a savepoint) can take the row back."""
    db.execute("INSERT INTO billed (out_trade_no, bill_date) VALUES ('HALF', '2026-11-26')")  # type: ignore[attr-defined]
    raise ValueError("failed after writing")


def _billed(store: SqliteStore) -> list[str]:
    """What is committed, read by a connection of its own."""
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        return [row[0] for row in db.execute("SELECT out_trade_no FROM billed")]


async def test_a_write_that_fails_after_changing_rows_is_undone_alone(store: SqliteStore) -> None:
    # Writes run without a savepoint each; one that half-wrote sends its batch round again with savepoints.
    a, c = [await store.create(factories.payment(), source=Source.API, detail={}) for _ in range(2)]
    before = store.writes.stats.batches
    results = await asyncio.gather(
        store.transition(a, State.PREPAID, Trigger.PREPAY, source=Source.API, at=T0),
        store.writes.submit(_half_written),
        store.transition(c, State.CLOSED, Trigger.CLOSE, source=Source.API, at=T0),
        return_exceptions=True,
    )
    assert store.writes.stats.batches == before + 1
    assert isinstance(results[0], type(a)) and results[0].state is State.PREPAID
    assert isinstance(results[1], ValueError)
    assert isinstance(results[2], type(c)) and results[2].state is State.CLOSED
    assert _billed(store) == []
    assert (await store.get(a.out_trade_no)) == results[0] and (await store.get(c.out_trade_no)) == results[2]
    assert [e.trigger for e in await store.events(a.out_trade_no)] == ["create", "prepay"]  # applied once

    # Alone in its batch: the same, on the writer's thread.
    with pytest.raises(ValueError, match="after writing"):
        await store.writes.submit(_half_written)
    assert _billed(store) == []
    await store.writes.submit(
        lambda db: db.execute("INSERT INTO billed (out_trade_no, bill_date) VALUES ('OK', '2026-11-26')"))
    assert _billed(store) == ["OK"]  # the connection is usable afterwards, outside any transaction


async def test_writes_queued_during_a_commit_share_the_next_one(store: SqliteStore) -> None:
    payments = [await store.create(factories.payment(), source=Source.API, detail={}) for _ in range(64)]
    before = store.writes.stats.batches
    await asyncio.gather(*(store.transition(p, State.CLOSED, Trigger.CLOSE, source=Source.API, at=T0)
                           for p in payments))
    assert store.writes.stats.batches - before <= 2 and store.writes.stats.largest_batch >= 32


async def test_a_closed_store_refuses_writes(store: SqliteStore) -> None:
    await store.close()
    with pytest.raises(errors.StoreUnavailable):
        await store.create(factories.payment(), source=Source.API, detail={})


async def test_writes_waiting_on_a_stopped_writer_fail_instead_of_hanging(store: SqliteStore) -> None:
    a, b = [await store.create(factories.payment(), source=Source.API, detail={}) for _ in range(2)]
    held = asyncio.Event()

    def slow(db: object) -> None:
        held.set()
        db.execute("SELECT 1")  # type: ignore[attr-defined]

    in_batch = asyncio.ensure_future(store.writes.submit(slow))
    queued = asyncio.ensure_future(
        store.transition(a, State.CLOSED, Trigger.CLOSE, source=Source.API, at=T0))
    await asyncio.sleep(0)  # both queued; the writer takes the first batch
    [writer] = [task for task in asyncio.all_tasks() if task.get_name() == "sqlite-group-commit"]
    writer.cancel()  # the writer dies mid-run (a bug, or a loop shut down under it, as asyncio.run does)
    results = await asyncio.wait_for(asyncio.gather(in_batch, queued, return_exceptions=True), 5)
    assert all(isinstance(r, errors.StoreUnavailable) for r in results), results
    with pytest.raises(errors.StoreUnavailable, match="stopped"):
        await store.transition(b, State.CLOSED, Trigger.CLOSE, source=Source.API, at=T0)


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from payflow.states import Source, State, Trigger
    from payflow.store import open_store
    from tests import factories

    async def main():
        store = await open_store(sys.argv[1])
        payments = [await store.create(factories.payment(out_trade_no=f"K{i:09d}", order_id=f"k-{i}"),
                                       source=Source.API, detail={}) for i in range(2000)]
        print("ready", flush=True)

        async def one(p):
            moved = await store.transition(p, State.PREPAID, Trigger.PREPAY, source=Source.API,
                                           at=factories.T0, changes={"prepay_id": "wx"})
            print(moved.out_trade_no, flush=True)  # acknowledged: committed

        for start in range(0, len(payments), 64):
            await asyncio.gather(*(one(p) for p in payments[start:start + 64]))

    asyncio.run(main())
    """
)


async def test_sigkill_mid_batch_loses_nothing_acknowledged_and_half_applies_nothing(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    child = subprocess.Popen(  # noqa: ASYNC220 (killed below, also on failure)
        [sys.executable, "-c", _CHILD, url], stdout=subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    acknowledged: list[str] = []
    try:
        assert child.stdout is not None
        assert (await asyncio.to_thread(child.stdout.readline)).strip() == b"ready"
        while len(acknowledged) < 300:  # kill while batches are being committed
            acknowledged.append((await asyncio.to_thread(child.stdout.readline)).strip().decode())
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout:
            child.stdout.close()
    store = await open_store(url)
    try:
        prepaid = await store.list_payments(state=State.PREPAID, limit=5000)
        assert {p.out_trade_no for p in prepaid} >= set(acknowledged)
        assert len(prepaid) < 2000  # it really died mid-way
        for payment in await store.list_payments(limit=5000):
            events = await store.events(payment.out_trade_no)
            # state, version and timeline always agree: a transition is all there or not at all
            assert len(events) == payment.version and events[-1].to_state is payment.state
    finally:
        await store.close()
