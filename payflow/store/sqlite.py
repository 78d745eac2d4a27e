"""SQLite backend of `PaymentStore`: WAL with synchronous=FULL, migrations by user_version.

Writes go through one group-commit writer (all writes queued during a commit share the next one, and
a failed write fails alone; see group_commit), which owns a plain sqlite3 connection and its thread; reads
use a second connection (aiosqlite), so they never see another write's uncommitted state and never queue
behind a commit.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import operator
import secrets
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

import aiosqlite

from payflow import errors, models
from payflow.states import State, Trigger
from payflow.store import RUN_STALE_AFTER, UNSCHEDULED, Decide, Decided, Note, PaymentStore, transition_changes
from payflow.store.group_commit import GroupCommitWriter
from payflow.store.sqlite_refunds import SqliteRefunds
from payflow.store.sqlite_schema import (
    MIGRATIONS,
    PAYMENT_COLUMNS,
    PAYMENT_FIELDS,
    SELECT_PAYMENT,
    connect,
    connect_reader,
    event_row,
    from_ts,
    insert_event,
    insert_notification,
    migrate,
    notification_row,
    payment_row,
    select_payment,
    to_json,
    ts,
)

__all__ = ["MIGRATIONS", "SqliteStore"]


class SqliteStore(SqliteRefunds, PaymentStore):
    def __init__(self, path: str, writes: GroupCommitWriter, reader: aiosqlite.Connection,
                 stats: aiosqlite.Connection) -> None:
        self.path = path
        self.writes = writes
        self._reader = reader
        # Whole-table counts for /metrics run on their own connection (and thread): a scan of a large table
        # never holds up the reads the API answers from (WAL lets both read at once).
        self._stats = stats

    @classmethod
    async def open(cls, path: str) -> SqliteStore:
        try:
            writes = await GroupCommitWriter.open(functools.partial(_open_writer, path))
            try:
                reader = await connect_reader(path)
                try:
                    stats = await connect_reader(path)
                except BaseException:
                    await reader.close()
                    raise
            except BaseException:
                await writes.close()
                raise
        except sqlite3.Error as exc:
            raise errors.StoreUnavailable(f"cannot open SQLite store {path!r}: {exc}") from exc
        return cls(path, writes, reader, stats)

    async def close(self) -> None:
        try:
            await self.writes.close()  # what is queued still commits
        finally:
            try:
                await self._reader.close()
            finally:
                await self._stats.close()

    async def ping(self) -> None:
        try:
            async with self._reader.execute("SELECT 1") as cursor:
                await cursor.fetchone()
        except (sqlite3.Error, ValueError) as exc:  # ValueError: connection already closed
            raise errors.StoreUnavailable(str(exc)) from exc

    # --- writes -------------------------------------------------------------------------------

    async def create(self, payment: models.Payment, *, source: str, detail: Mapping[str, Any]) -> models.Payment:
        if payment.state is not State.CREATED:
            raise errors.IllegalTransition("new", f"create as {payment.state.value}")

        def work(db: sqlite3.Connection) -> models.Payment:
            try:
                db.execute(
                    f"INSERT INTO payments ({PAYMENT_COLUMNS}) VALUES ({', '.join('?' * 25)})",
                    (
                        payment.out_trade_no, payment.order_id, payment.amount, payment.currency,
                        payment.description, payment.openid, payment.attach, payment.state.value,
                        payment.version, payment.event_id, payment.prepay_id, payment.transaction_id,
                        ts(payment.paid_at), payment.paid_amount, ts(payment.expires_at),
                        ts(payment.next_attempt_at), payment.attempts, None,
                        ts(payment.created_at), ts(payment.updated_at), payment.trade_type, payment.appid,
                        payment.payer_client_ip, payment.h5_type, payment.pay_url,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise errors.DuplicatePayment(
                    f"a payment with order_id {payment.order_id!r} or out_trade_no {payment.out_trade_no!r} exists"
                ) from exc
            insert_event(db, payment.out_trade_no, None, State.CREATED, "create", source,
                                detail, payment.created_at)
            return payment

        return await self.writes.submit(work)

    async def transition(
        self,
        payment: models.Payment,
        to: State,
        trigger: Trigger,
        *,
        source: str,
        at: dt.datetime,
        detail: Mapping[str, Any] | None = None,
        changes: Mapping[str, Any] | None = None,
        notification: models.Notification | None = None,
        lease_token: str | None = None,
    ) -> models.Payment:
        to, trigger = State(to), Trigger(trigger)
        values = transition_changes(payment, to, trigger, changes)
        return await self.writes.submit(lambda db: _cas(db, payment, to, trigger, values, source=source, at=at,
                                                          detail=detail, notification=notification,
                                                          lease_token=lease_token))

    async def decide(
        self,
        out_trade_no: str,
        decide: Decide,
        *,
        at: dt.datetime,
        notification: models.Notification | None = None,
    ) -> Decided:
        # The read, the decision and the write all happen in one write of the batch, on the writer's
        # connection: nothing can change the payment in between, and its pages are in that connection's
        # cache (the read connection's cache is emptied by every commit).
        def work(db: sqlite3.Connection) -> Decided:
            rows = db.execute(SELECT_PAYMENT, (out_trade_no,)).fetchall()
            payment = payment_row(rows[0]) if rows else None
            step = decide(payment)
            if notification is not None and not insert_notification(db, notification, step.outcome):
                return Decided(None, None, None)  # recorded before: nothing was written, nothing will be
            if step.to is None or step.trigger is None or payment is None:
                return Decided(step, payment, payment)
            values = transition_changes(payment, step.to, step.trigger, step.changes)
            moved = _cas(db, payment, step.to, step.trigger, values, source=step.source, at=at, detail=step.detail,
                         notification=None, lease_token=step.lease_token)
            return Decided(step, payment, moved)

        return await self.writes.enqueue(work)  # every notification comes here: one coroutine fewer

    async def reschedule(
        self, payment: models.Payment, *, next_attempt_at: dt.datetime | None, attempts: int, at: dt.datetime,
        note: Note | None = None,
    ) -> models.Payment:
        if payment.state in UNSCHEDULED:
            next_attempt_at = None

        def work(db: sqlite3.Connection) -> models.Payment:
            rows = list(db.execute(
                "UPDATE payments SET next_attempt_at = ?, attempts = ?, lease_token = NULL, "
                "version = version + 1, updated_at = ? "
                "WHERE out_trade_no = ? AND state = ? AND version = ? AND lease_token IS ? "
                f"RETURNING {PAYMENT_COLUMNS}",
                (ts(next_attempt_at), attempts, ts(at), payment.out_trade_no, payment.state.value,
                 payment.version, payment.lease_token),
            ))
            if len(rows) != 1:
                raise errors.StaleState(f"payment {payment.out_trade_no} changed or lost its lease")
            if note is not None:
                insert_event(db, payment.out_trade_no, payment.state, payment.state, note.trigger, note.source,
                             note.detail, at)
            return payment_row(rows[0])

        return await self.writes.submit(work)

    async def claim(self, payment: models.Payment, *, now: dt.datetime, lease: float) -> models.Payment:
        def work(db: sqlite3.Connection) -> models.Payment:
            rows = list(db.execute(
                "UPDATE payments SET next_attempt_at = ?, lease_token = ? "
                "WHERE out_trade_no = ? AND state = ? AND version = ? "
                "AND (lease_token IS NULL OR next_attempt_at IS NULL OR next_attempt_at <= ?) "
                f"RETURNING {PAYMENT_COLUMNS}",
                (ts(now + dt.timedelta(seconds=lease)), secrets.token_hex(8), payment.out_trade_no,
                 payment.state.value, payment.version, ts(now)),
            ))
            if len(rows) != 1:
                raise errors.StaleState(f"payment {payment.out_trade_no} changed or is leased by another worker")
            return payment_row(rows[0])

        return await self.writes.submit(work)

    async def claim_due(self, now: dt.datetime, limit: int, lease: float) -> list[models.Payment]:
        if limit <= 0:
            return []
        until = now + dt.timedelta(seconds=lease)

        def work(db: sqlite3.Connection) -> list[models.Payment]:
            ids = [row[0] for row in db.execute(
                "SELECT out_trade_no FROM payments "
                "WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= ? "
                "ORDER BY next_attempt_at LIMIT ?",
                (ts(now), limit),
            ).fetchall()]
            claimed = []
            for out_trade_no in ids:
                # The lease is the pushed-back next attempt: if the worker dies, the payment is due again
                # when the lease runs out, with no separate expiry sweep.
                db.execute(
                    "UPDATE payments SET next_attempt_at = ?, lease_token = ? WHERE out_trade_no = ?",
                    (ts(until), secrets.token_hex(8), out_trade_no),
                )
                claimed.append(payment_row(select_payment(db, out_trade_no)))
            return claimed

        return await self.writes.submit(work)

    async def record_notification(self, notification: models.Notification) -> bool:
        return await self.writes.submit(lambda db: insert_notification(db, notification))

    # --- reconciliation -----------------------------------------------------------------------

    async def start_reconciliation(self, bill_date: dt.date, at: dt.datetime) -> int | None:
        def work(db: sqlite3.Connection) -> int | None:
            # One writer: the check and the insert cannot interleave with another process's run start.
            cursor = db.execute(
                "INSERT INTO reconciliation_runs (bill_date, started_at, status, counts) "
                "SELECT ?, ?, 'running', '{}' WHERE NOT EXISTS (SELECT 1 FROM reconciliation_runs "
                "WHERE bill_date = ? AND status = 'running' AND started_at > ?)",
                (bill_date.isoformat(), ts(at), bill_date.isoformat(), ts(at - RUN_STALE_AFTER)))
            return int(cursor.lastrowid) if cursor.rowcount == 1 and cursor.lastrowid else None

        return await self.writes.submit(work)

    async def finish_reconciliation(self, run_id: int, *, status: str, counts: Mapping[str, int],
                                    at: dt.datetime, error: str | None = None) -> None:
        await self.writes.submit(lambda db: db.execute(
            "UPDATE reconciliation_runs SET status = ?, counts = ?, finished_at = ?, error = ? WHERE id = ?",
            (status, to_json(counts), ts(at), error, run_id)))

    async def reconciliation_runs(self, bill_date: dt.date) -> list[models.ReconciliationRun]:
        rows = await self._fetchall("SELECT * FROM reconciliation_runs WHERE bill_date = ? ORDER BY id",
                                    (bill_date.isoformat(),))
        return [models.ReconciliationRun(
            id=row["id"], bill_date=dt.date.fromisoformat(row["bill_date"]),
            started_at=from_ts(row["started_at"]),  # type: ignore[arg-type]
            finished_at=from_ts(row["finished_at"]), status=row["status"], counts=json.loads(row["counts"]),
            error=row["error"]) for row in rows]

    async def add_discrepancy(self, discrepancy: models.Discrepancy) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "INSERT INTO discrepancies (bill_date, out_trade_no, category, detail, found_at) "
                "VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (bill_date, out_trade_no, category) DO NOTHING",
                (discrepancy.bill_date.isoformat(), discrepancy.out_trade_no, discrepancy.category,
                 to_json(discrepancy.detail), ts(discrepancy.found_at)))
            return cursor.rowcount == 1

        return await self.writes.submit(work)

    async def discrepancies(self, bill_date: dt.date) -> list[models.Discrepancy]:
        rows = await self._fetchall(
            "SELECT * FROM discrepancies WHERE bill_date = ? ORDER BY category, out_trade_no", (bill_date.isoformat(),))
        return [models.Discrepancy(
            bill_date=dt.date.fromisoformat(row["bill_date"]), out_trade_no=row["out_trade_no"],
            category=row["category"], detail=json.loads(row["detail"]),
            found_at=from_ts(row["found_at"])) for row in rows]  # type: ignore[arg-type]

    async def mark_billed(self, bill_date: dt.date, out_trade_nos: Iterable[str]) -> None:
        rows = [(no, bill_date.isoformat()) for no in out_trade_nos]
        await self.writes.submit(lambda db: db.executemany(
            "INSERT INTO billed (out_trade_no, bill_date) VALUES (?, ?) ON CONFLICT (out_trade_no) DO NOTHING", rows))

    async def billed(self, out_trade_nos: Iterable[str]) -> set[str]:
        wanted = list(out_trade_nos)
        found: set[str] = set()
        for start in range(0, len(wanted), 500):  # stay under SQLite's bound-parameter limit
            chunk = wanted[start:start + 500]
            rows = await self._fetchall(
                f"SELECT out_trade_no FROM billed WHERE out_trade_no IN ({', '.join('?' * len(chunk))})",
                tuple(chunk))
            found.update(row[0] for row in rows)
        return found

    async def paid_between(self, start: dt.datetime, end: dt.datetime) -> list[models.Payment]:
        rows = await self._fetchall(
            f"SELECT {PAYMENT_COLUMNS} FROM payments WHERE paid_at IS NOT NULL AND paid_at >= ? AND paid_at < ? "
            "ORDER BY paid_at", (ts(start), ts(end)))
        return [payment_row(row) for row in rows]

    # --- reads --------------------------------------------------------------------------------

    async def _fetchall(self, sql: str, params: tuple[Any, ...], *,
                        on: aiosqlite.Connection | None = None) -> list[sqlite3.Row]:
        try:
            # One trip to the connection's thread (execute + fetchall + close), not three.
            return list(await (on or self._reader).execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise errors.StoreUnavailable(f"SQLite read failed: {exc}") from exc

    async def get(self, out_trade_no: str) -> models.Payment | None:
        rows = await self._fetchall(SELECT_PAYMENT, (out_trade_no,))
        return payment_row(rows[0]) if rows else None

    async def get_by_order_id(self, order_id: str) -> models.Payment | None:
        rows = await self._fetchall(
            f"SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id = ? AND order_released = 0", (order_id,))
        return payment_row(rows[0]) if rows else None

    async def list_payments(self, *, state: State | None = None, after: str | None = None,
                            limit: int = 100) -> list[models.Payment]:
        clauses, params = ["out_trade_no > ?"], [after or ""]
        if state is not None:
            clauses.append("state = ?")
            params.append(State(state).value)
        rows = await self._fetchall(
            f"SELECT {PAYMENT_COLUMNS} FROM payments WHERE {' AND '.join(clauses)} ORDER BY out_trade_no LIMIT ?",
            (*params, limit))
        return [payment_row(row) for row in rows]

    async def list_stuck(self, *, created_before: dt.datetime, expired_before: dt.datetime,
                         after: tuple[dt.datetime, str] | None = None, limit: int = 100) -> list[models.Payment]:
        cursor_at, cursor_no = (ts(after[0]), after[1]) if after else ("", "")
        rows = await self._fetchall(
            f"SELECT {PAYMENT_COLUMNS} FROM payments WHERE "
            "((state = 'created' AND created_at < ?) OR (state = 'prepaid' AND expires_at < ?) "
            " OR (state = 'notified' AND attempts > 0)) "
            "AND (created_at > ? OR (created_at = ? AND out_trade_no > ?)) "
            "ORDER BY created_at, out_trade_no LIMIT ?",
            (ts(created_before), ts(expired_before), cursor_at, cursor_at, cursor_no, limit))
        return [payment_row(row) for row in rows]

    async def due_stats(self, now: dt.datetime) -> tuple[int, dt.datetime | None]:
        rows = await self._fetchall(
            "SELECT count(*), min(next_attempt_at) FROM payments "
            "WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= ?", (ts(now),), on=self._stats)
        return rows[0][0], from_ts(rows[0][1])

    async def record_event(self, payment: models.Payment, trigger: str, *, source: str, at: dt.datetime,
                           detail: Mapping[str, Any]) -> None:
        await self.writes.submit(lambda db: insert_event(
            db, payment.out_trade_no, payment.state, payment.state, trigger, source, detail, at))

    async def count_by_state(self) -> dict[State, int]:
        rows = await self._fetchall("SELECT state, count(*) FROM payments GROUP BY state", (), on=self._stats)
        return {State(row[0]): row[1] for row in rows}

    async def events(self, out_trade_no: str) -> list[models.Event]:
        rows = await self._fetchall("SELECT * FROM order_events WHERE out_trade_no = ? ORDER BY id",
                                    (out_trade_no,))
        return [event_row(row) for row in rows]

    async def get_notification(self, notification_id: str) -> models.Notification | None:
        rows = await self._fetchall("SELECT * FROM notifications WHERE notification_id = ?", (notification_id,))
        return notification_row(rows[0]) if rows else None

    async def notifications(self, out_trade_no: str) -> list[models.Notification]:
        rows = await self._fetchall("SELECT * FROM notifications WHERE out_trade_no = ? "
                                    "ORDER BY received_at, notification_id", (out_trade_no,))
        return [notification_row(row) for row in rows]

    async def get_by_transaction_id(self, transaction_id: str) -> models.Payment | None:
        rows = await self._fetchall(f"SELECT {PAYMENT_COLUMNS} FROM payments WHERE transaction_id = ?",
                                    (transaction_id,))
        return payment_row(rows[0]) if rows else None


def _open_writer(path: str) -> sqlite3.Connection:
    """On the writer's thread: its connection, migrated before any write can reach it."""
    db = connect(path)
    try:
        migrate(db)
    except BaseException:
        db.close()
        raise
    return db


def _cas(
    db: sqlite3.Connection,
    payment: models.Payment,
    to: State,
    trigger: Trigger,
    values: Mapping[str, Any],
    *,
    source: str,
    at: dt.datetime,
    detail: Mapping[str, Any] | None,
    notification: models.Notification | None,
    lease_token: str | None,
) -> models.Payment:
    """On the writer's connection: the compare-and-set, its event row, and the notification row if any.

    Returns the payment as written: the CAS matched (state, version), and every write bumps the version,
    so the row is `payment` with exactly the columns set here changed (no RETURNING and re-mapping).
    """
    columns = tuple(values)
    sql = _CAS_SQL.get(columns)
    if sql is None:
        assignments = "".join(f", {column} = ?" for column in columns)
        sql = _CAS_SQL[columns] = (
            f"UPDATE payments SET state = ?, version = version + 1, lease_token = ?, updated_at = ?{assignments} "
            "WHERE out_trade_no = ? AND state = ? AND version = ?")
    params = [ts(v) if isinstance(v, dt.datetime) else v for v in values.values()]
    at_text = ts(at)
    cursor = db.execute(
        sql, (to.value, lease_token, at_text, *params, payment.out_trade_no, payment.state.value, payment.version))
    if cursor.rowcount != 1:
        raise errors.StaleState(f"payment {payment.out_trade_no} is no longer {payment.state.value} v{payment.version}")
    insert_event(db, payment.out_trade_no, payment.state, to, trigger.value, source, detail, at, at_text=at_text)
    if notification is not None:
        insert_notification(db, notification)
    fields = list(_ALL_FIELDS(payment))
    for name, value in values.items():
        if name in _FIELD_INDEX:  # not `order_released`: a column only the store reads
            fields[_FIELD_INDEX[name]] = _utc(value) if isinstance(value, dt.datetime) else value
    fields[_STATE], fields[_VERSION], fields[_LEASE], fields[_UPDATED] = to, payment.version + 1, lease_token, _utc(at)
    return models.Payment(*fields)


# The CAS statement for each set of changed columns (a handful exist: one per kind of transition).
_CAS_SQL: dict[tuple[str, ...], str] = {}
# A Payment's fields in constructor order, read in one call; and where each one sits.
_ALL_FIELDS = operator.attrgetter(*PAYMENT_FIELDS)
_FIELD_INDEX = {name: i for i, name in enumerate(PAYMENT_FIELDS)}
_STATE, _VERSION, _LEASE, _UPDATED = (_FIELD_INDEX[name] for name in ("state", "version", "lease_token", "updated_at"))


def _utc(value: dt.datetime) -> dt.datetime:
    """A time as the store reads it back: in UTC (`ts` keeps every microsecond)."""
    return value if value.tzinfo is dt.UTC else value.astimezone(dt.UTC)
