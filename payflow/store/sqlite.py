"""SQLite backend of `PaymentStore`: aiosqlite, WAL with synchronous=FULL, migrations by user_version.

One connection writes (serialised by a lock, one transaction per domain verb); a second one reads, so
readers never observe another coroutine's uncommitted transaction and never queue behind a commit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
import sqlite3
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiosqlite

from payflow import errors, models, states
from payflow.states import State, Trigger
from payflow.store import CHANGEABLE, UNSCHEDULED, PaymentStore

_STATES_SQL = ", ".join(f"'{s.value}'" for s in State)

# Each entry moves the schema from version i to i+1; never edit a released entry, append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        f"""
        CREATE TABLE payments (
            out_trade_no    TEXT PRIMARY KEY,
            order_id        TEXT NOT NULL UNIQUE,
            amount          INTEGER NOT NULL CHECK (amount > 0),
            currency        TEXT NOT NULL,
            description     TEXT NOT NULL,
            openid          TEXT NOT NULL,
            attach          TEXT,
            state           TEXT NOT NULL CHECK (state IN ({_STATES_SQL})),
            version         INTEGER NOT NULL,
            event_id        TEXT NOT NULL UNIQUE,
            prepay_id       TEXT,
            transaction_id  TEXT,
            paid_at         TEXT,
            paid_amount     INTEGER,
            expires_at      TEXT NOT NULL,
            next_attempt_at TEXT,
            attempts        INTEGER NOT NULL DEFAULT 0,
            lease_token     TEXT,
            created_at      TEXT NOT NULL,
            updated_at      TEXT NOT NULL
        )
        """,
        # Only scheduled payments are in this index, so a due-scan costs what is due, not the table size.
        "CREATE INDEX payments_due ON payments (next_attempt_at) WHERE next_attempt_at IS NOT NULL",
        f"""
        CREATE TABLE order_events (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            out_trade_no TEXT NOT NULL REFERENCES payments (out_trade_no),
            from_state   TEXT CHECK (from_state IN ({_STATES_SQL})),
            to_state     TEXT NOT NULL CHECK (to_state IN ({_STATES_SQL})),
            trigger      TEXT NOT NULL,
            source       TEXT NOT NULL,
            detail       TEXT NOT NULL,
            at           TEXT NOT NULL
        )
        """,
        "CREATE INDEX order_events_by_payment ON order_events (out_trade_no, id)",
        """
        CREATE TABLE notifications (
            notification_id TEXT PRIMARY KEY,
            out_trade_no    TEXT,
            event_type      TEXT NOT NULL,
            outcome         TEXT NOT NULL,
            resource        TEXT NOT NULL,
            received_at     TEXT NOT NULL
        )
        """,
        "CREATE INDEX notifications_by_payment ON notifications (out_trade_no)",
    ),
    (
        """
        CREATE TABLE reconciliation_runs (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            bill_date   TEXT NOT NULL,
            started_at  TEXT NOT NULL,
            finished_at TEXT,
            status      TEXT NOT NULL,
            counts      TEXT NOT NULL,
            error       TEXT
        )
        """,
        "CREATE INDEX reconciliation_runs_by_date ON reconciliation_runs (bill_date, id)",
        """
        CREATE TABLE discrepancies (
            bill_date    TEXT NOT NULL,
            out_trade_no TEXT NOT NULL,
            category     TEXT NOT NULL,
            detail       TEXT NOT NULL,
            found_at     TEXT NOT NULL,
            PRIMARY KEY (bill_date, out_trade_no, category)
        )
        """,
        """
        CREATE TABLE billed (
            out_trade_no TEXT PRIMARY KEY,
            bill_date    TEXT NOT NULL
        )
        """,
        # BANK_MISS looks for payments paid on one day; only paid payments have paid_at.
        "CREATE INDEX payments_paid_at ON payments (paid_at) WHERE paid_at IS NOT NULL",
    ),
)

_PAYMENT_COLUMNS = (
    "out_trade_no, order_id, amount, currency, description, openid, attach, state, version, event_id, "
    "prepay_id, transaction_id, paid_at, paid_amount, expires_at, next_attempt_at, attempts, lease_token, "
    "created_at, updated_at"
)


def _ts(value: dt.datetime | None) -> str | None:
    """Fixed-width UTC text, so SQL string comparison orders like time does."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime reached the store; payflow times are timezone-aware")
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")


def _dt(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value is not None else None


def _payment(row: sqlite3.Row) -> models.Payment:
    return models.Payment(
        out_trade_no=row["out_trade_no"],
        order_id=row["order_id"],
        amount=row["amount"],
        currency=row["currency"],
        description=row["description"],
        openid=row["openid"],
        attach=row["attach"],
        state=State(row["state"]),
        version=row["version"],
        event_id=row["event_id"],
        prepay_id=row["prepay_id"],
        transaction_id=row["transaction_id"],
        paid_at=_dt(row["paid_at"]),
        paid_amount=row["paid_amount"],
        expires_at=_dt(row["expires_at"]),  # type: ignore[arg-type]
        next_attempt_at=_dt(row["next_attempt_at"]),
        attempts=row["attempts"],
        lease_token=row["lease_token"],
        created_at=_dt(row["created_at"]),  # type: ignore[arg-type]
        updated_at=_dt(row["updated_at"]),  # type: ignore[arg-type]
    )


def _event(row: sqlite3.Row) -> models.Event:
    return models.Event(
        id=row["id"],
        out_trade_no=row["out_trade_no"],
        from_state=State(row["from_state"]) if row["from_state"] else None,
        to_state=State(row["to_state"]),
        trigger=row["trigger"],
        source=row["source"],
        detail=json.loads(row["detail"]),
        at=_dt(row["at"]),  # type: ignore[arg-type]
    )


def _notification(row: sqlite3.Row) -> models.Notification:
    return models.Notification(
        notification_id=row["notification_id"],
        out_trade_no=row["out_trade_no"],
        event_type=row["event_type"],
        outcome=row["outcome"],
        resource=json.loads(row["resource"]),
        received_at=_dt(row["received_at"]),  # type: ignore[arg-type]
    )


def _json(value: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(value or {}), ensure_ascii=False, sort_keys=True, default=str)


class SqliteStore(PaymentStore):
    def __init__(self, path: str, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str) -> SqliteStore:
        try:
            writer = await _connect(path)
            try:
                await _migrate(writer)
                reader = await _connect(path)
            except BaseException:
                await writer.close()
                raise
        except sqlite3.Error as exc:
            raise errors.StoreUnavailable(f"cannot open SQLite store {path!r}: {exc}") from exc
        return cls(path, writer, reader)

    async def close(self) -> None:
        async with self._write_lock:
            await self._reader.close()
            await self._writer.close()

    async def ping(self) -> None:
        try:
            async with self._reader.execute("SELECT 1") as cursor:
                await cursor.fetchone()
        except (sqlite3.Error, ValueError) as exc:  # ValueError: connection already closed
            raise errors.StoreUnavailable(str(exc)) from exc

    # --- writes -------------------------------------------------------------------------------

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._write_lock:
            try:
                await self._writer.execute("BEGIN IMMEDIATE")
                try:
                    yield self._writer
                except BaseException:
                    if self._writer.in_transaction:
                        await self._writer.execute("ROLLBACK")
                    raise
                await self._writer.execute("COMMIT")
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as exc:
                if self._writer.in_transaction:
                    await self._writer.execute("ROLLBACK")
                raise errors.StoreUnavailable(f"SQLite write failed: {exc}") from exc

    async def create(self, payment: models.Payment, *, source: str, detail: Mapping[str, Any]) -> models.Payment:
        if payment.state is not State.CREATED:
            raise errors.IllegalTransition("new", f"create as {payment.state.value}")
        try:
            async with self._transaction() as db:
                await db.execute(
                    f"INSERT INTO payments ({_PAYMENT_COLUMNS}) VALUES ({', '.join('?' * 20)})",
                    (
                        payment.out_trade_no, payment.order_id, payment.amount, payment.currency,
                        payment.description, payment.openid, payment.attach, payment.state.value,
                        payment.version, payment.event_id, payment.prepay_id, payment.transaction_id,
                        _ts(payment.paid_at), payment.paid_amount, _ts(payment.expires_at),
                        _ts(payment.next_attempt_at), payment.attempts, None,
                        _ts(payment.created_at), _ts(payment.updated_at),
                    ),
                )
                await _insert_event(db, payment.out_trade_no, None, State.CREATED, "create", source,
                                    detail, payment.created_at)
        except sqlite3.IntegrityError as exc:
            raise errors.DuplicatePayment(
                f"a payment with order_id {payment.order_id!r} or out_trade_no {payment.out_trade_no!r} exists"
            ) from exc
        return payment

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
        # The table is checked here too, so no caller can write a step the state machine does not have.
        if states.destination(payment.state, trigger) is not to:
            raise errors.IllegalTransition(payment.state.value, trigger.value)
        values = dict(changes or {})
        unknown = set(values) - CHANGEABLE
        if unknown:
            raise ValueError(f"transition cannot change {sorted(unknown)}")
        values.setdefault("attempts", 0)
        if to in UNSCHEDULED:
            values["next_attempt_at"] = None
        assignments = ", ".join(f"{column} = ?" for column in values)
        params = [_ts(v) if isinstance(v, dt.datetime) else v for v in values.values()]
        try:
            async with self._transaction() as db:
                cursor = await db.execute(
                    f"UPDATE payments SET state = ?, version = version + 1, lease_token = ?, "
                    f"updated_at = ?, {assignments} "
                    f"WHERE out_trade_no = ? AND state = ? AND version = ?",
                    (to.value, lease_token, _ts(at), *params, payment.out_trade_no, payment.state.value,
                     payment.version),
                )
                if cursor.rowcount != 1:
                    raise errors.StaleState(
                        f"payment {payment.out_trade_no} is no longer {payment.state.value} v{payment.version}"
                    )
                await _insert_event(db, payment.out_trade_no, payment.state, to, trigger.value, source,
                                    detail, at)
                if notification is not None:
                    await _insert_notification(db, notification)
                row = await _select_payment(db, payment.out_trade_no)
        except sqlite3.IntegrityError as exc:
            raise errors.Conflict(f"transition of {payment.out_trade_no} violates a constraint: {exc}") from exc
        return _payment(row)

    async def reschedule(
        self, payment: models.Payment, *, next_attempt_at: dt.datetime | None, attempts: int, at: dt.datetime
    ) -> models.Payment:
        if payment.state in UNSCHEDULED:
            next_attempt_at = None
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE payments SET next_attempt_at = ?, attempts = ?, lease_token = NULL, "
                "version = version + 1, updated_at = ? "
                "WHERE out_trade_no = ? AND state = ? AND version = ? AND lease_token IS ?",
                (_ts(next_attempt_at), attempts, _ts(at), payment.out_trade_no, payment.state.value,
                 payment.version, payment.lease_token),
            )
            if cursor.rowcount != 1:
                raise errors.StaleState(f"payment {payment.out_trade_no} changed or lost its lease")
            row = await _select_payment(db, payment.out_trade_no)
        return _payment(row)

    async def claim_due(self, now: dt.datetime, limit: int, lease: float) -> list[models.Payment]:
        if limit <= 0:
            return []
        until = now + dt.timedelta(seconds=lease)
        async with self._transaction() as db:
            async with db.execute(
                "SELECT out_trade_no FROM payments "
                "WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= ? "
                "ORDER BY next_attempt_at LIMIT ?",
                (_ts(now), limit),
            ) as cursor:
                ids = [row[0] for row in await cursor.fetchall()]
            claimed = []
            for out_trade_no in ids:
                # The lease is the pushed-back next attempt: if the worker dies, the payment is due again
                # when the lease runs out, with no separate expiry sweep.
                await db.execute(
                    "UPDATE payments SET next_attempt_at = ?, lease_token = ? WHERE out_trade_no = ?",
                    (_ts(until), secrets.token_hex(8), out_trade_no),
                )
                claimed.append(_payment(await _select_payment(db, out_trade_no)))
        return claimed

    async def record_notification(self, notification: models.Notification) -> bool:
        async with self._transaction() as db:
            return await _insert_notification(db, notification)

    # --- reconciliation -----------------------------------------------------------------------

    async def start_reconciliation(self, bill_date: dt.date, at: dt.datetime) -> int:
        async with self._transaction() as db:
            cursor = await db.execute(
                "INSERT INTO reconciliation_runs (bill_date, started_at, status, counts) "
                "VALUES (?, ?, 'running', '{}')",
                (bill_date.isoformat(), _ts(at)))
            return int(cursor.lastrowid or 0)

    async def finish_reconciliation(self, run_id: int, *, status: str, counts: Mapping[str, int],
                                    at: dt.datetime, error: str | None = None) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE reconciliation_runs SET status = ?, counts = ?, finished_at = ?, error = ? WHERE id = ?",
                (status, _json(counts), _ts(at), error, run_id))

    async def reconciliation_runs(self, bill_date: dt.date) -> list[models.ReconciliationRun]:
        rows = await self._fetchall("SELECT * FROM reconciliation_runs WHERE bill_date = ? ORDER BY id",
                                    (bill_date.isoformat(),))
        return [models.ReconciliationRun(
            id=row["id"], bill_date=dt.date.fromisoformat(row["bill_date"]),
            started_at=_dt(row["started_at"]),  # type: ignore[arg-type]
            finished_at=_dt(row["finished_at"]), status=row["status"], counts=json.loads(row["counts"]),
            error=row["error"]) for row in rows]

    async def add_discrepancy(self, discrepancy: models.Discrepancy) -> bool:
        async with self._transaction() as db:
            cursor = await db.execute(
                "INSERT INTO discrepancies (bill_date, out_trade_no, category, detail, found_at) "
                "VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (bill_date, out_trade_no, category) DO NOTHING",
                (discrepancy.bill_date.isoformat(), discrepancy.out_trade_no, discrepancy.category,
                 _json(discrepancy.detail), _ts(discrepancy.found_at)))
            return cursor.rowcount == 1

    async def discrepancies(self, bill_date: dt.date) -> list[models.Discrepancy]:
        rows = await self._fetchall(
            "SELECT * FROM discrepancies WHERE bill_date = ? ORDER BY category, out_trade_no", (bill_date.isoformat(),))
        return [models.Discrepancy(
            bill_date=dt.date.fromisoformat(row["bill_date"]), out_trade_no=row["out_trade_no"],
            category=row["category"], detail=json.loads(row["detail"]),
            found_at=_dt(row["found_at"])) for row in rows]  # type: ignore[arg-type]

    async def mark_billed(self, bill_date: dt.date, out_trade_nos: Iterable[str]) -> None:
        async with self._transaction() as db:
            await db.executemany(
                "INSERT INTO billed (out_trade_no, bill_date) VALUES (?, ?) ON CONFLICT (out_trade_no) DO NOTHING",
                [(no, bill_date.isoformat()) for no in out_trade_nos])

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
            f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE paid_at IS NOT NULL AND paid_at >= ? AND paid_at < ? "
            "ORDER BY paid_at", (_ts(start), _ts(end)))
        return [_payment(row) for row in rows]

    # --- reads --------------------------------------------------------------------------------

    async def _fetchall(self, sql: str, params: tuple[Any, ...]) -> list[sqlite3.Row]:
        try:
            async with self._reader.execute(sql, params) as cursor:
                return list(await cursor.fetchall())
        except sqlite3.Error as exc:
            raise errors.StoreUnavailable(f"SQLite read failed: {exc}") from exc

    async def get(self, out_trade_no: str) -> models.Payment | None:
        rows = await self._fetchall(f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE out_trade_no = ?",
                                    (out_trade_no,))
        return _payment(rows[0]) if rows else None

    async def get_by_order_id(self, order_id: str) -> models.Payment | None:
        rows = await self._fetchall(f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE order_id = ?", (order_id,))
        return _payment(rows[0]) if rows else None

    async def list_payments(self, *, state: State | None = None, after: str | None = None,
                            limit: int = 100) -> list[models.Payment]:
        clauses, params = ["out_trade_no > ?"], [after or ""]
        if state is not None:
            clauses.append("state = ?")
            params.append(State(state).value)
        rows = await self._fetchall(
            f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE {' AND '.join(clauses)} ORDER BY out_trade_no LIMIT ?",
            (*params, limit))
        return [_payment(row) for row in rows]

    async def list_stuck(self, *, created_before: dt.datetime, expired_before: dt.datetime,
                         after: tuple[dt.datetime, str] | None = None, limit: int = 100) -> list[models.Payment]:
        cursor_at, cursor_no = (_ts(after[0]), after[1]) if after else ("", "")
        rows = await self._fetchall(
            f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE "
            "((state = 'created' AND created_at < ?) OR (state = 'prepaid' AND expires_at < ?) "
            " OR (state = 'notified' AND attempts > 0)) "
            "AND (created_at > ? OR (created_at = ? AND out_trade_no > ?)) "
            "ORDER BY created_at, out_trade_no LIMIT ?",
            (_ts(created_before), _ts(expired_before), cursor_at, cursor_at, cursor_no, limit))
        return [_payment(row) for row in rows]

    async def due_stats(self, now: dt.datetime) -> tuple[int, dt.datetime | None]:
        rows = await self._fetchall(
            "SELECT count(*), min(next_attempt_at) FROM payments "
            "WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= ?", (_ts(now),))
        return rows[0][0], _dt(rows[0][1])

    async def record_event(self, payment: models.Payment, trigger: str, *, source: str, at: dt.datetime,
                           detail: Mapping[str, Any]) -> None:
        async with self._transaction() as db:
            await _insert_event(db, payment.out_trade_no, payment.state, payment.state, trigger, source, detail, at)

    async def count_by_state(self) -> dict[State, int]:
        rows = await self._fetchall("SELECT state, count(*) FROM payments GROUP BY state", ())
        return {State(row[0]): row[1] for row in rows}

    async def events(self, out_trade_no: str) -> list[models.Event]:
        rows = await self._fetchall("SELECT * FROM order_events WHERE out_trade_no = ? ORDER BY id",
                                    (out_trade_no,))
        return [_event(row) for row in rows]

    async def get_notification(self, notification_id: str) -> models.Notification | None:
        rows = await self._fetchall("SELECT * FROM notifications WHERE notification_id = ?", (notification_id,))
        return _notification(rows[0]) if rows else None


async def _connect(path: str) -> aiosqlite.Connection:
    # Probe in a plain thread first: when aiosqlite's own connect fails, its worker thread may later
    # report to an event loop that is already closed.
    await asyncio.to_thread(lambda: sqlite3.connect(path).close())
    db = await aiosqlite.connect(path, isolation_level=None)
    db.row_factory = sqlite3.Row
    # Another process (a second replica starting, the CLI's `inspect`) may hold the write lock briefly.
    await db.execute("PRAGMA busy_timeout = 10000")
    await db.execute("PRAGMA journal_mode = WAL")
    # FULL: a committed payment state survives power loss, not only a process crash.
    await db.execute("PRAGMA synchronous = FULL")
    await db.execute("PRAGMA foreign_keys = ON")
    return db


async def _migrate(db: aiosqlite.Connection) -> None:
    # BEGIN IMMEDIATE takes the write lock first, so two processes starting together migrate once.
    await db.execute("BEGIN IMMEDIATE")
    try:
        async with db.execute("PRAGMA user_version") as cursor:
            (version,) = await cursor.fetchone()  # type: ignore[misc]
        if version > len(MIGRATIONS):
            raise errors.StoreUnavailable(
                f"database schema v{version} is newer than this payflow (v{len(MIGRATIONS)}); upgrade payflow")
        for number in range(version, len(MIGRATIONS)):
            for statement in MIGRATIONS[number]:
                await db.execute(statement)
            await db.execute(f"PRAGMA user_version = {number + 1}")
    except BaseException:
        await db.execute("ROLLBACK")
        raise
    await db.execute("COMMIT")


async def _select_payment(db: aiosqlite.Connection, out_trade_no: str) -> sqlite3.Row:
    async with db.execute(f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE out_trade_no = ?",
                          (out_trade_no,)) as cursor:
        row = await cursor.fetchone()
    assert row is not None
    return row


async def _insert_event(
    db: aiosqlite.Connection,
    out_trade_no: str,
    from_state: State | None,
    to_state: State,
    trigger: str,
    source: str,
    detail: Mapping[str, Any] | None,
    at: dt.datetime,
) -> None:
    await db.execute(
        "INSERT INTO order_events (out_trade_no, from_state, to_state, trigger, source, detail, at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (out_trade_no, from_state.value if from_state else None, to_state.value, trigger, str(source),
         _json(detail), _ts(at)),
    )


async def _insert_notification(db: aiosqlite.Connection, notification: models.Notification) -> bool:
    cursor = await db.execute(
        "INSERT INTO notifications (notification_id, out_trade_no, event_type, outcome, resource, received_at) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (notification_id) DO NOTHING",
        (notification.notification_id, notification.out_trade_no, notification.event_type,
         notification.outcome, _json(notification.resource), _ts(notification.received_at)),
    )
    return cursor.rowcount == 1
