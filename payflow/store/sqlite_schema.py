"""SQLite connections, schema (migrations by PRAGMA user_version), row conversions and statement helpers."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import sqlite3
from collections.abc import Mapping
from typing import Any

import aiosqlite

from payflow import errors, models
from payflow.states import State
from payflow.states.refunds import RefundState

# The states each released migration allowed, spelled out: a released migration must not follow later changes.
_V1_STATES_SQL = "'created', 'prepaid', 'notified', 'synced', 'reconciled', 'closed', 'needs_review'"
STATES_SQL = ", ".join(f"'{s.value}'" for s in State)  # as of the newest migration
_V5_STATES_SQL = _V1_STATES_SQL + ", 'refunded'"
if STATES_SQL != _V5_STATES_SQL:
    raise ImportError("a payment state was added or renamed: append a migration for its CHECK constraints")
REFUND_STATES_SQL = ", ".join(f"'{s.value}'" for s in RefundState)

# The payments columns of schema v2, spelled out: a released migration must not follow later changes.
_V2_COLUMNS = (
    "out_trade_no, order_id, amount, currency, description, openid, attach, state, version, event_id, "
    "prepay_id, transaction_id, paid_at, paid_amount, expires_at, next_attempt_at, attempts, lease_token, "
    "created_at, updated_at"
)

# ... and of v4 (v2's, order_released, the products' columns).
_V4_COLUMNS = _V2_COLUMNS + ", order_released, trade_type, appid, payer_client_ip, h5_type, pay_url"

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
            state           TEXT NOT NULL CHECK (state IN ({_V1_STATES_SQL})),
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
            from_state   TEXT CHECK (from_state IN ({_V1_STATES_SQL})),
            to_state     TEXT NOT NULL CHECK (to_state IN ({_V1_STATES_SQL})),
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
    # v3: a payment WeChat refused outright (no order exists there) releases its order_id, so a corrected
    # request for the same business order can be placed (README "order_id"). Only live payments hold an
    # order_id uniquely; SQLite cannot drop a column's UNIQUE, so the table is rebuilt (foreign keys are
    # off while `migrate` runs and checked before it commits).
    (
        f"""
        CREATE TABLE payments_v3 (
            out_trade_no    TEXT PRIMARY KEY,
            order_id        TEXT NOT NULL,
            amount          INTEGER NOT NULL CHECK (amount > 0),
            currency        TEXT NOT NULL,
            description     TEXT NOT NULL,
            openid          TEXT NOT NULL,
            attach          TEXT,
            state           TEXT NOT NULL CHECK (state IN ({_V1_STATES_SQL})),
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
            updated_at      TEXT NOT NULL,
            order_released  INTEGER NOT NULL DEFAULT 0 CHECK (order_released IN (0, 1))
        )
        """,
        f"INSERT INTO payments_v3 ({_V2_COLUMNS}) SELECT {_V2_COLUMNS} FROM payments",
        "DROP TABLE payments",
        "ALTER TABLE payments_v3 RENAME TO payments",
        "CREATE INDEX payments_due ON payments (next_attempt_at) WHERE next_attempt_at IS NOT NULL",
        "CREATE INDEX payments_paid_at ON payments (paid_at) WHERE paid_at IS NOT NULL",
        "CREATE UNIQUE INDEX payments_live_order_id ON payments (order_id) WHERE order_released = 0",
        "CREATE INDEX payments_by_order_id ON payments (order_id, created_at)",
    ),
    # v4: every WeChat Pay product (issue 17): what a placement of each needs to be re-sent identically, and
    # what Native and H5 placements answer.
    (
        "ALTER TABLE payments ADD COLUMN trade_type TEXT NOT NULL DEFAULT 'jsapi'",
        "ALTER TABLE payments ADD COLUMN appid TEXT",
        "ALTER TABLE payments ADD COLUMN payer_client_ip TEXT",
        "ALTER TABLE payments ADD COLUMN h5_type TEXT",
        "ALTER TABLE payments ADD COLUMN pay_url TEXT",
        # An operator's search by WeChat's transaction id (the console), and the bill's lines by it.
        "CREATE INDEX payments_by_transaction_id ON payments (transaction_id) WHERE transaction_id IS NOT NULL",
    ),
    # v5: refunds (issue 16). A payment whose refunds reach its amount is `refunded`: the CHECKs of payments and
    # order_events are rebuilt to allow it (foreign keys off meanwhile, as for v3). Refunds are their own
    # outbox, as payments are: `next_attempt_at` is when the sweeper re-drives one.
    (
        f"""
        CREATE TABLE payments_v5 (
            out_trade_no    TEXT PRIMARY KEY,
            order_id        TEXT NOT NULL,
            amount          INTEGER NOT NULL CHECK (amount > 0),
            currency        TEXT NOT NULL,
            description     TEXT NOT NULL,
            openid          TEXT NOT NULL,
            attach          TEXT,
            state           TEXT NOT NULL CHECK (state IN ({_V5_STATES_SQL})),
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
            updated_at      TEXT NOT NULL,
            order_released  INTEGER NOT NULL DEFAULT 0 CHECK (order_released IN (0, 1)),
            trade_type      TEXT NOT NULL DEFAULT 'jsapi',
            appid           TEXT,
            payer_client_ip TEXT,
            h5_type         TEXT,
            pay_url         TEXT
        )
        """,
        f"INSERT INTO payments_v5 ({_V4_COLUMNS}) SELECT {_V4_COLUMNS} FROM payments",
        "DROP TABLE payments",
        "ALTER TABLE payments_v5 RENAME TO payments",
        "CREATE INDEX payments_due ON payments (next_attempt_at) WHERE next_attempt_at IS NOT NULL",
        "CREATE INDEX payments_paid_at ON payments (paid_at) WHERE paid_at IS NOT NULL",
        "CREATE UNIQUE INDEX payments_live_order_id ON payments (order_id) WHERE order_released = 0",
        "CREATE INDEX payments_by_order_id ON payments (order_id, created_at)",
        "CREATE INDEX payments_by_transaction_id ON payments (transaction_id) WHERE transaction_id IS NOT NULL",
        f"""
        CREATE TABLE order_events_v5 (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            out_trade_no TEXT NOT NULL REFERENCES payments (out_trade_no),
            from_state   TEXT CHECK (from_state IN ({_V5_STATES_SQL})),
            to_state     TEXT NOT NULL CHECK (to_state IN ({_V5_STATES_SQL})),
            trigger      TEXT NOT NULL,
            source       TEXT NOT NULL,
            detail       TEXT NOT NULL,
            at           TEXT NOT NULL
        )
        """,
        "INSERT INTO order_events_v5 (id, out_trade_no, from_state, to_state, trigger, source, detail, at) "
        "SELECT id, out_trade_no, from_state, to_state, trigger, source, detail, at FROM order_events",
        "DROP TABLE order_events",
        "ALTER TABLE order_events_v5 RENAME TO order_events",
        "CREATE INDEX order_events_by_payment ON order_events (out_trade_no, id)",
        f"""
        CREATE TABLE refunds (
            out_refund_no   TEXT PRIMARY KEY,
            out_trade_no    TEXT NOT NULL REFERENCES payments (out_trade_no),
            amount          INTEGER NOT NULL CHECK (amount > 0),
            state           TEXT NOT NULL CHECK (state IN ({REFUND_STATES_SQL})),
            version         INTEGER NOT NULL,
            created_at      TEXT NOT NULL,
            updated_at      TEXT NOT NULL,
            event_id        TEXT NOT NULL UNIQUE,
            origin          TEXT NOT NULL,
            reason          TEXT,
            cause           TEXT,
            refund_id       TEXT,
            succeeded_at    TEXT,
            next_attempt_at TEXT,
            attempts        INTEGER NOT NULL DEFAULT 0,
            lease_token     TEXT,
            billed_on       TEXT,
            failure         TEXT
        )
        """,
        "CREATE INDEX refunds_due ON refunds (next_attempt_at) WHERE next_attempt_at IS NOT NULL",
        "CREATE INDEX refunds_by_payment ON refunds (out_trade_no, created_at)",
        "CREATE INDEX refunds_succeeded_at ON refunds (succeeded_at) WHERE succeeded_at IS NOT NULL",
        f"""
        CREATE TABLE refund_events (
            id            INTEGER PRIMARY KEY AUTOINCREMENT,
            out_refund_no TEXT NOT NULL REFERENCES refunds (out_refund_no),
            from_state    TEXT CHECK (from_state IN ({REFUND_STATES_SQL})),
            to_state      TEXT NOT NULL CHECK (to_state IN ({REFUND_STATES_SQL})),
            trigger       TEXT NOT NULL,
            source        TEXT NOT NULL,
            detail        TEXT NOT NULL,
            at            TEXT NOT NULL
        )
        """,
        "CREATE INDEX refund_events_by_refund ON refund_events (out_refund_no, id)",
    ),
)

PAYMENT_COLUMNS = (
    "out_trade_no, order_id, amount, currency, description, openid, attach, state, version, event_id, "
    "prepay_id, transaction_id, paid_at, paid_amount, expires_at, next_attempt_at, attempts, lease_token, "
    "created_at, updated_at, trade_type, appid, payer_client_ip, h5_type, pay_url"
)


# What `isoformat(timespec="microseconds")` gives for a UTC time, formatted without it: isoformat goes
# through C sprintf once per field and costs 1.7 times as much (several of these per notification).
_UTC_TEXT = "%04d-%02d-%02dT%02d:%02d:%02d.%06d+00:00"

# One string object, not one formatted per call: sqlite3 finds its prepared statement by the text's hash,
# which a str computes once.
SELECT_PAYMENT = f"SELECT {PAYMENT_COLUMNS} FROM payments WHERE out_trade_no = ?"


def ts(value: dt.datetime | None) -> str | None:
    """Fixed-width UTC text, so SQL string comparison orders like time does."""
    if value is None:
        return None
    if value.tzinfo is not dt.UTC:
        if value.tzinfo is None:
            raise ValueError("naive datetime reached the store; payflow times are timezone-aware")
        value = value.astimezone(dt.UTC)
    return _UTC_TEXT % (value.year, value.month, value.day, value.hour, value.minute, value.second,
                        value.microsecond)


def from_ts(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value is not None else None


_STATES = {state.value: state for state in State}
_from_iso = dt.datetime.fromisoformat
# Payment's fields in constructor order. payment_row and the CAS result build a Payment by position, so a
# reordered field must fail loudly, here, rather than map columns wrongly.
PAYMENT_FIELDS = tuple(field.name for field in dataclasses.fields(models.Payment))
if PAYMENT_FIELDS != (
    "out_trade_no", "order_id", "amount", "description", "openid", "state", "version", "created_at", "updated_at",
    "expires_at", "event_id", "currency", "attach", "prepay_id", "transaction_id", "paid_at", "paid_amount",
    "next_attempt_at", "attempts", "lease_token", "trade_type", "appid", "payer_client_ip", "h5_type", "pay_url"):
    raise ImportError("payment_row's argument order no longer matches models.Payment's fields")


def payment_row(row: sqlite3.Row) -> models.Payment:
    """A row selected as PAYMENT_COLUMNS, by position (every notification maps one: name lookups and
    keyword arguments were a measurable share of the notify path)."""
    (out_trade_no, order_id, amount, currency, description, openid, attach, state, version, event_id, prepay_id,
     transaction_id, paid_at, paid_amount, expires_at, next_attempt_at, attempts, lease_token, created_at,
     updated_at, trade_type, appid, payer_client_ip, h5_type, pay_url) = row
    return models.Payment(
        out_trade_no, order_id, amount, description, openid, _STATES[state], version, _from_iso(created_at),
        _from_iso(updated_at), _from_iso(expires_at), event_id, currency, attach, prepay_id, transaction_id,
        None if paid_at is None else _from_iso(paid_at), paid_amount,
        None if next_attempt_at is None else _from_iso(next_attempt_at), attempts, lease_token, trade_type, appid,
        payer_client_ip, h5_type, pay_url,
    )


def event_row(row: sqlite3.Row) -> models.Event:
    return models.Event(
        id=row["id"],
        out_trade_no=row["out_trade_no"],
        from_state=State(row["from_state"]) if row["from_state"] else None,
        to_state=State(row["to_state"]),
        trigger=row["trigger"],
        source=row["source"],
        detail=json.loads(row["detail"]),
        at=from_ts(row["at"]),  # type: ignore[arg-type]
    )


def notification_row(row: sqlite3.Row) -> models.Notification:
    return models.Notification(
        notification_id=row["notification_id"],
        out_trade_no=row["out_trade_no"],
        event_type=row["event_type"],
        outcome=row["outcome"],
        resource=json.loads(row["resource"]),
        received_at=from_ts(row["received_at"]),  # type: ignore[arg-type]
    )


# One encoder, not one per call as json.dumps with options builds (one event row per transition).
_JSON = json.JSONEncoder(ensure_ascii=False, sort_keys=True, default=str)


def to_json(value: Mapping[str, Any] | None) -> str:
    return _JSON.encode(value if value.__class__ is dict else dict(value or {}))


PRAGMAS = (
    # Another process (a second replica starting, the CLI's `inspect`) may hold the write lock briefly.
    "PRAGMA busy_timeout = 10000",
    "PRAGMA journal_mode = WAL",
    # FULL: a committed payment state survives power loss, not only a process crash.
    "PRAGMA synchronous = FULL",
    "PRAGMA foreign_keys = ON",
    # 16 MiB instead of SQLite's 2 MiB: a group-commit batch dirties pages all over the payments, events
    # and notifications tables; with the small cache it spills them to the WAL mid-transaction and
    # reads them back.
    "PRAGMA cache_size = -16384",
)


def connect(path: str) -> sqlite3.Connection:
    """The write connection (blocking: the group-commit writer runs this on its own thread)."""
    # Not bound to one thread: the group-commit writer runs a batch's statements on the event loop and
    # its BEGIN and COMMIT on the writer's thread, one at a time (see group_commit).
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.row_factory = sqlite3.Row
        for pragma in PRAGMAS:
            db.execute(pragma)
    except BaseException:
        db.close()
        raise
    return db


async def connect_reader(path: str) -> aiosqlite.Connection:
    # Probe in a plain thread first: when aiosqlite's own connect fails, its worker thread may later
    # report to an event loop that is already closed.
    await asyncio.to_thread(lambda: sqlite3.connect(path).close())
    db = await aiosqlite.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.row_factory = sqlite3.Row
        for pragma in PRAGMAS:
            await db.execute(pragma)
    except BaseException:
        await db.close()  # and with it aiosqlite's thread
        raise
    return db


def migrate(db: sqlite3.Connection) -> None:
    # A table rebuild (v3) drops a table other tables reference: foreign keys are off meanwhile (a no-op
    # inside a transaction, hence before BEGIN) and checked as a whole before COMMIT.
    db.execute("PRAGMA foreign_keys = OFF")
    try:
        _migrate(db)
    finally:
        db.execute("PRAGMA foreign_keys = ON")


def _migrate(db: sqlite3.Connection) -> None:
    # BEGIN IMMEDIATE takes the write lock first, so two processes starting together migrate once.
    db.execute("BEGIN IMMEDIATE")
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > len(MIGRATIONS):
            raise errors.StoreUnavailable(
                f"database schema v{version} is newer than this payflow (v{len(MIGRATIONS)}); upgrade payflow")
        for number in range(version, len(MIGRATIONS)):
            for statement in MIGRATIONS[number]:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {number + 1}")
        broken = db.execute("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise errors.StoreUnavailable(f"migration left {len(broken)} rows with a dangling reference")
    except BaseException:
        if db.in_transaction:  # not if SQLite already rolled back (disk full, I/O error)
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def select_payment(db: sqlite3.Connection, out_trade_no: str) -> sqlite3.Row:
    rows: list[sqlite3.Row] = db.execute(SELECT_PAYMENT, (out_trade_no,)).fetchall()
    [row] = rows
    return row


def insert_event(
    db: sqlite3.Connection,
    out_trade_no: str,
    from_state: State | None,
    to_state: State,
    trigger: str,
    source: str,
    detail: Mapping[str, Any] | None,
    at: dt.datetime,
    *,
    at_text: str | None = None,
) -> None:
    """The timeline row of a state change; `at_text` is `ts(at)` when the caller has it already."""
    db.execute(
        "INSERT INTO order_events (out_trade_no, from_state, to_state, trigger, source, detail, at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (out_trade_no, from_state.value if from_state else None, to_state.value, trigger, str(source),
         to_json(detail), at_text or ts(at)),
    )


def insert_notification(db: sqlite3.Connection, notification: models.Notification, outcome: str | None = None) -> bool:
    """Record `notification` (with `outcome` instead of its own, when given); False if its id is known."""
    cursor = db.execute(
        "INSERT INTO notifications (notification_id, out_trade_no, event_type, outcome, resource, received_at) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (notification_id) DO NOTHING",
        (notification.notification_id, notification.out_trade_no, notification.event_type,
         notification.outcome if outcome is None else outcome,
         notification.resource_json if notification.resource_json is not None else to_json(notification.resource),
         ts(notification.received_at)),
    )
    return cursor.rowcount == 1
