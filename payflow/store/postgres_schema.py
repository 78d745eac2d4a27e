"""PostgreSQL schema: versioned migrations, applied once under an advisory lock even when replicas
start together."""

from __future__ import annotations

import zlib

import asyncpg

from payflow import errors
from payflow.states import State
from payflow.states.refunds import RefundState

# The states each released migration allowed, spelled out: a released migration must not follow later changes.
_V1_STATES_SQL = "'created', 'prepaid', 'notified', 'synced', 'reconciled', 'closed', 'needs_review'"
_V5_STATES_SQL = _V1_STATES_SQL + ", 'refunded'"
_V5_REFUND_STATES_SQL = "'created', 'processing', 'succeeded', 'synced', 'abnormal', 'closed', 'failed'"
STATES_SQL = ", ".join(f"'{s.value}'" for s in State)  # as of the newest migration
if STATES_SQL != _V5_STATES_SQL:
    raise ImportError("a payment state was added or renamed: append a migration for its CHECK constraints")
if ", ".join(f"'{s.value}'" for s in RefundState) != _V5_REFUND_STATES_SQL:
    raise ImportError("a refund state was added or renamed: append a migration for its CHECK constraints")
# One lock per database (and schema): replicas starting together migrate one after the other.
MIGRATION_LOCK = zlib.crc32(b"payflow:migrations")
# A function of the schema that aborts the statement calling it as a duplicate notification (migration v3).
NOTIFICATION_RECORDED = "payflow_notification_recorded"

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
            paid_at         TIMESTAMPTZ,
            paid_amount     INTEGER,
            expires_at      TIMESTAMPTZ NOT NULL,
            next_attempt_at TIMESTAMPTZ,
            attempts        INTEGER NOT NULL DEFAULT 0,
            lease_token     TEXT,
            created_at      TIMESTAMPTZ NOT NULL,
            updated_at      TIMESTAMPTZ NOT NULL
        )
        """,
        # Only scheduled payments are in this index, so a due-scan costs what is due, not the table size.
        "CREATE INDEX payments_due ON payments (next_attempt_at) WHERE next_attempt_at IS NOT NULL",
        "CREATE INDEX payments_paid_at ON payments (paid_at) WHERE paid_at IS NOT NULL",
        "CREATE INDEX payments_created ON payments (created_at, out_trade_no)",
        f"""
        CREATE TABLE order_events (
            id           BIGSERIAL PRIMARY KEY,
            out_trade_no TEXT NOT NULL REFERENCES payments (out_trade_no),
            from_state   TEXT CHECK (from_state IN ({_V1_STATES_SQL})),
            to_state     TEXT NOT NULL CHECK (to_state IN ({_V1_STATES_SQL})),
            trigger      TEXT NOT NULL,
            source       TEXT NOT NULL,
            detail       JSONB NOT NULL,
            at           TIMESTAMPTZ NOT NULL
        )
        """,
        "CREATE INDEX order_events_by_payment ON order_events (out_trade_no, id)",
        """
        CREATE TABLE notifications (
            notification_id TEXT PRIMARY KEY,
            out_trade_no    TEXT,
            event_type      TEXT NOT NULL,
            outcome         TEXT NOT NULL,
            resource        JSONB NOT NULL,
            received_at     TIMESTAMPTZ NOT NULL
        )
        """,
        "CREATE INDEX notifications_by_payment ON notifications (out_trade_no)",
        """
        CREATE TABLE reconciliation_runs (
            id          BIGSERIAL PRIMARY KEY,
            bill_date   DATE NOT NULL,
            started_at  TIMESTAMPTZ NOT NULL,
            finished_at TIMESTAMPTZ,
            status      TEXT NOT NULL,
            counts      JSONB NOT NULL,
            error       TEXT
        )
        """,
        "CREATE INDEX reconciliation_runs_by_date ON reconciliation_runs (bill_date, id)",
        """
        CREATE TABLE discrepancies (
            bill_date    DATE NOT NULL,
            out_trade_no TEXT NOT NULL,
            category     TEXT NOT NULL,
            detail       JSONB NOT NULL,
            found_at     TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (bill_date, out_trade_no, category)
        )
        """,
        "CREATE TABLE billed (out_trade_no TEXT PRIMARY KEY, bill_date DATE NOT NULL)",
    ),
    # v2: a payment WeChat refused outright (no order exists there) releases its order_id, so a corrected
    # request for the same business order can be placed (README "order_id"); only live payments hold an
    # order_id uniquely.
    (
        "ALTER TABLE payments ADD COLUMN order_released BOOLEAN NOT NULL DEFAULT FALSE",
        "ALTER TABLE payments DROP CONSTRAINT payments_order_id_key",
        "CREATE UNIQUE INDEX payments_live_order_id ON payments (order_id) WHERE NOT order_released",
        "CREATE INDEX payments_by_order_id ON payments (order_id, created_at)",
    ),
    # v3: how the one-statement write of a notification's decision refuses a notification id that a concurrent
    # delivery recorded first: the whole statement fails as the duplicate key it is, so none of it is kept
    # (postgres_writes.py). VOLATILE: evaluated only where the CASE reaches it.
    (
        f"""
        CREATE FUNCTION {NOTIFICATION_RECORDED}(notification_id TEXT) RETURNS BOOLEAN VOLATILE LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'notification % is already recorded', notification_id
                USING ERRCODE = 'unique_violation', CONSTRAINT = 'notifications_pkey', TABLE = 'notifications';
        END
        $$
        """,
    ),
    # v4: every WeChat Pay product (issue 17): what a placement of each needs to be re-sent identically, and
    # what Native and H5 placements answer; an index for the search by WeChat's transaction id.
    (
        "ALTER TABLE payments ADD COLUMN trade_type TEXT NOT NULL DEFAULT 'jsapi'",
        "ALTER TABLE payments ADD COLUMN appid TEXT",
        "ALTER TABLE payments ADD COLUMN payer_client_ip TEXT",
        "ALTER TABLE payments ADD COLUMN h5_type TEXT",
        "ALTER TABLE payments ADD COLUMN pay_url TEXT",
        "CREATE INDEX payments_by_transaction_id ON payments (transaction_id) WHERE transaction_id IS NOT NULL",
    ),
    # v5: refunds (issue 16). A payment whose refunds reach its amount is `refunded`: the CHECKs of payments and
    # order_events (named by PostgreSQL in v1: table_column_check) are replaced to allow it. Refunds are their
    # own outbox, as payments are: `next_attempt_at` is when the sweeper re-drives one.
    (
        "ALTER TABLE payments DROP CONSTRAINT payments_state_check",
        f"ALTER TABLE payments ADD CONSTRAINT payments_state_check CHECK (state IN ({_V5_STATES_SQL}))",
        "ALTER TABLE order_events DROP CONSTRAINT order_events_from_state_check",
        "ALTER TABLE order_events DROP CONSTRAINT order_events_to_state_check",
        f"ALTER TABLE order_events ADD CONSTRAINT order_events_from_state_check "
        f"CHECK (from_state IN ({_V5_STATES_SQL}))",
        f"ALTER TABLE order_events ADD CONSTRAINT order_events_to_state_check CHECK (to_state IN ({_V5_STATES_SQL}))",
        f"""
        CREATE TABLE refunds (
            out_refund_no   TEXT PRIMARY KEY,
            out_trade_no    TEXT NOT NULL REFERENCES payments (out_trade_no),
            amount          INTEGER NOT NULL CHECK (amount > 0),
            state           TEXT NOT NULL CHECK (state IN ({_V5_REFUND_STATES_SQL})),
            version         INTEGER NOT NULL,
            created_at      TIMESTAMPTZ NOT NULL,
            updated_at      TIMESTAMPTZ NOT NULL,
            event_id        TEXT NOT NULL UNIQUE,
            origin          TEXT NOT NULL,
            reason          TEXT,
            cause           TEXT,
            refund_id       TEXT,
            succeeded_at    TIMESTAMPTZ,
            next_attempt_at TIMESTAMPTZ,
            attempts        INTEGER NOT NULL DEFAULT 0,
            lease_token     TEXT,
            billed_on       DATE,
            failure         TEXT
        )
        """,
        "CREATE INDEX refunds_due ON refunds (next_attempt_at) WHERE next_attempt_at IS NOT NULL",
        "CREATE INDEX refunds_by_payment ON refunds (out_trade_no, created_at)",
        "CREATE INDEX refunds_succeeded_at ON refunds (succeeded_at) WHERE succeeded_at IS NOT NULL",
        f"""
        CREATE TABLE refund_events (
            id            BIGSERIAL PRIMARY KEY,
            out_refund_no TEXT NOT NULL REFERENCES refunds (out_refund_no),
            from_state    TEXT CHECK (from_state IN ({_V5_REFUND_STATES_SQL})),
            to_state      TEXT NOT NULL CHECK (to_state IN ({_V5_REFUND_STATES_SQL})),
            trigger       TEXT NOT NULL,
            source        TEXT NOT NULL,
            detail        JSONB NOT NULL,
            at            TIMESTAMPTZ NOT NULL
        )
        """,
        "CREATE INDEX refund_events_by_refund ON refund_events (out_refund_no, id)",
    ),
)


async def migrate(connection: asyncpg.Connection) -> None:
    await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await connection.execute("CREATE TABLE IF NOT EXISTS payflow_schema (version INTEGER NOT NULL)")
        version = await connection.fetchval("SELECT max(version) FROM payflow_schema") or 0
        if version > len(MIGRATIONS):
            raise errors.StoreUnavailable(
                f"database schema v{version} is newer than this payflow (v{len(MIGRATIONS)}); upgrade payflow")
        for number in range(version, len(MIGRATIONS)):
            async with connection.transaction():
                for statement in MIGRATIONS[number]:
                    await connection.execute(statement)
                await connection.execute("INSERT INTO payflow_schema (version) VALUES ($1)", number + 1)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
