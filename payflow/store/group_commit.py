"""Group commit for SQLite: one writer task runs every write queued while the previous commit was in
flight inside one transaction, so N concurrent writers share one fsync.

A write that fails (a lost compare-and-set, a constraint, a refused decision) fails alone: its caller
alone gets the error and its batch-mates commit. Writes run without a savepoint each: an open savepoint
makes SQLite copy every page a write touches into its sub-journal first, about a third of the SQL cost
of a notification. That is safe because a write that fails before changing a row leaves nothing (SQLite
statements are atomic on their own); the rare write that fails after changing rows is caught by the
connection's change counter, and its batch is rolled back and applied again with a savepoint per write.
A caller is answered only after COMMIT returned, so an acknowledged write is on disk (synchronous=FULL).

The writer owns its plain sqlite3 connection and the one thread that opens, BEGINs, COMMITs and closes it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from payflow import errors, logs
from payflow.store.batching import BatchLoop
from payflow.store.writer_thread import WriterThread

log = logs.get_logger(__name__)

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], Any]  # runs inside the batch transaction, on the loop or the writer's thread

MAX_BATCH = 256


@dataclasses.dataclass(slots=True)
class _Item:
    work: Work
    future: asyncio.Future[Any]


@dataclasses.dataclass(slots=True)
class Stats:
    batches: int = 0
    writes: int = 0
    largest_batch: int = 0


class GroupCommitWriter(BatchLoop[_Item]):
    def __init__(self, conn: sqlite3.Connection, thread: WriterThread, *, max_batch: int = MAX_BATCH) -> None:
        """Takes over `conn` and `thread` (the only one that blocks on `conn`); see `open`."""
        super().__init__("sqlite-group-commit", max_batch=max_batch)
        self._conn = conn
        self._thread = thread
        self._released = False  # the connection closed and the thread stopped
        self.stats = Stats()

    @classmethod
    async def open(cls, connect: Callable[[], sqlite3.Connection], *, max_batch: int = MAX_BATCH) -> GroupCommitWriter:
        """A writer of the connection `connect` opens (blocking: it runs on the writer's new thread)."""
        thread = WriterThread("payflow-sqlite-writer")
        opened: list[sqlite3.Connection] = []

        def connect_once() -> sqlite3.Connection:
            conn = connect()
            opened.append(conn)
            return conn

        try:
            conn = await thread.run(connect_once)
        except BaseException as exc:
            # No thread outlives a failed open: after a failed connect it is idle and joins at once; cancelled
            # mid-connect, it closes what it opened and then stops by itself.
            thread.call(_close_all, opened)
            thread.stop(wait=not isinstance(exc, asyncio.CancelledError))
            raise
        return cls(conn, thread, max_batch=max_batch)

    async def submit(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in the next batch and return its result once that batch is committed."""
        return await self.enqueue(work)

    def enqueue(self, work: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """`submit` without its coroutine: the future resolves once the batch holding `work` committed."""
        future: asyncio.Future[T] = self._loop().create_future()
        self._enqueue(_Item(work, future))
        return future

    async def close(self) -> None:
        """Finish what is queued, then close the connection and stop the thread."""
        failed = await self._finish()
        if failed is not None:
            log.error("store.writer_failed", error=repr(failed))
        if self._released:
            return
        self._released = True
        try:
            # Queued behind whatever the thread still runs (a hop the writer was cancelled in), never beside it.
            await self._thread.run(self._conn.close)
        finally:
            self._thread.stop(wait=True)  # idle now that the close ran: the join is immediate

    async def _apply(self, batch: list[_Item]) -> None:
        live = [item for item in batch if not item.future.cancelled()]  # a caller gone before: apply nothing
        works = [item.work for item in live]
        try:
            if len(live) <= 1:
                # A lone write (a quiet moment): all of it on the writer's thread, one hop there and back.
                outcomes = await self._thread.run(_run_alone, self._conn, works)
            else:
                outcomes = await self._apply_on_loop(works)
        except sqlite3.Error as exc:
            # The batch as a whole did not commit: nobody may be told their write succeeded.
            failure = errors.StoreUnavailable(f"SQLite commit failed: {exc}")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(failure)
            log.error("store.batch_failed", writes=len(batch), error=str(exc))
            return
        self.stats.batches += 1
        self.stats.writes += len(live)
        self.stats.largest_batch = max(self.stats.largest_batch, len(live))
        for item, (ok, value) in zip(live, outcomes, strict=True):
            if item.future.done():
                continue
            if ok:
                item.future.set_result(value)
            else:
                item.future.set_exception(value)

    async def _apply_on_loop(self, works: list[Work]) -> list[tuple[bool, Any]]:
        """BEGIN IMMEDIATE may wait for another process's write lock (busy_timeout), and COMMIT waits for the
        fsync: both run on the writer's thread. The writes in between only touch pages in memory, so they
        run here on the event loop: no thread hop or GIL handoff per statement, and the Python of each write
        (decisions, row mapping, JSON) is not held up behind the busy loop's, as it is on another thread."""
        conn, thread = self._conn, self._thread
        await thread.run(conn.execute, "BEGIN IMMEDIATE")
        try:
            outcomes = _apply_all(conn, works)
        except _HalfWritten:
            _rollback(conn)  # releases the lock; the isolated pass takes it again on the thread
            return await thread.run(_in_transaction, conn, _apply_isolated, works)
        except BaseException:
            await thread.run(_rollback, conn)
            raise
        try:
            await thread.run(conn.execute, "COMMIT")
        except BaseException:
            await thread.run(_rollback, conn)
            raise
        return outcomes


class _HalfWritten(Exception):
    """A write failed after changing rows: only rolling back its whole batch undoes it."""


def _apply_all(conn: sqlite3.Connection, works: list[Work]) -> list[tuple[bool, Any]]:
    """Inside the batch's transaction, without savepoints (see the module's doc)."""
    outcomes: list[tuple[bool, Any]] = []
    for work in works:
        changes = conn.total_changes
        try:
            value = work(conn)
        except Exception as exc:  # noqa: BLE001 — this write's failure is its caller's alone
            if not conn.in_transaction:
                # SQLite rolled the whole transaction back (I/O error, disk full): the batch failed.
                raise sqlite3.OperationalError(f"the batch's transaction was rolled back: {exc}") from exc
            if conn.total_changes != changes:
                raise _HalfWritten from exc
            outcomes.append((False, _store_error(exc)))
            continue
        outcomes.append((True, value))
    return outcomes


def _apply_isolated(conn: sqlite3.Connection, works: list[Work]) -> list[tuple[bool, Any]]:
    """Inside the batch's transaction: each write under its own savepoint, so a half-done write is undone
    alone (the slow path, after `_HalfWritten`)."""
    outcomes: list[tuple[bool, Any]] = []
    for work in works:
        conn.execute("SAVEPOINT write")
        try:
            value = work(conn)
        except Exception as exc:  # noqa: BLE001 — this write's failure is its caller's alone
            conn.execute("ROLLBACK TO write")
            conn.execute("RELEASE write")
            outcomes.append((False, _store_error(exc)))
            continue
        conn.execute("RELEASE write")
        outcomes.append((True, value))
    return outcomes


def _run_alone(conn: sqlite3.Connection, works: list[Work]) -> list[tuple[bool, Any]]:
    """On the writer's thread: BEGIN, the writes, COMMIT (again with savepoints if one half-failed)."""
    try:
        return _in_transaction(conn, _apply_all, works)
    except _HalfWritten:
        return _in_transaction(conn, _apply_isolated, works)


def _in_transaction(conn: sqlite3.Connection, apply: Callable[[sqlite3.Connection, list[Work]], list[tuple[bool, Any]]],
                    works: list[Work]) -> list[tuple[bool, Any]]:
    """On the writer's thread: BEGIN, `apply` the writes, COMMIT; rolled back if anything escapes."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        outcomes = apply(conn, works)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return outcomes


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _close_all(opened: list[sqlite3.Connection]) -> None:
    """On the writer's thread, after the connect ran: close what it opened, if anything."""
    for conn in opened:
        conn.close()


def _store_error(exc: Exception) -> Exception:
    if isinstance(exc, errors.PayflowError) or not isinstance(exc, sqlite3.Error):
        return exc
    if isinstance(exc, sqlite3.IntegrityError):
        return errors.Conflict(f"constraint violated: {exc}")
    return errors.StoreUnavailable(f"SQLite write failed: {exc}")
