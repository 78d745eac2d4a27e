"""PostgreSQL backend of `PaymentStore` (asyncpg) for several payflow replicas on one database.

Decisions and transitions are group-committed (postgres_group_commit): concurrent ones share one read and one
write statement (postgres_writes), each a compare-and-set with its event and notification rows. Claims use
`FOR UPDATE SKIP LOCKED` and a lease; the connection pool heals itself after the database restarts (calls
meanwhile raise `StoreUnavailable`: the API answers 503, WeChat's notification is retried, nothing acknowledged
is lost).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import urllib.parse
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import asyncpg

from payflow import errors, logs, models
from payflow.states import State, Trigger
from payflow.store import (
    RUN_STALE_AFTER,
    UNSCHEDULED,
    Decide,
    Decided,
    Note,
    PaymentStore,
    postgres_writes,
    transition_changes,
)
from payflow.store.postgres_group_commit import GroupWriter
from payflow.store.postgres_refunds import PostgresRefunds
from payflow.store.postgres_schema import migrate
from payflow.store.postgres_writes import (
    ALL_FIELDS,
    FIELDS,
    LEASE,
    STATE,
    Write,
    dumps,
    insert_notification,
    store_error,
)

# Connections per replica, unless the URL says `?pool_size=N`. Decisions and transitions take one at a time (the
# group commit), so the pool does not bound notifications (2 to 20 measured the same); the rest serve what runs
# beside them one statement each: the sweeper's claims and reschedules (PAYFLOW_SWEEP_CONCURRENCY, 8), creates and
# reads. More than that would only queue inside a server with few cores (BENCHMARKS.md, notify_throughput_pg).
POOL_SIZE = 10

_COLUMNS = (
    "out_trade_no, order_id, amount, currency, description, openid, attach, state, version, event_id, "
    "prepay_id, transaction_id, paid_at, paid_amount, expires_at, next_attempt_at, attempts, lease_token, "
    "created_at, updated_at, trade_type, appid, payer_client_ip, h5_type, pay_url"
)

def _payment(row: asyncpg.Record) -> models.Payment:
    return models.Payment(**{k: row[k] for k in row.keys() if k != "due_at"} | {"state": State(row["state"])})


def _event(row: asyncpg.Record) -> models.Event:
    return models.Event(id=row["id"], out_trade_no=row["out_trade_no"],
                        from_state=State(row["from_state"]) if row["from_state"] else None,
                        to_state=State(row["to_state"]), trigger=row["trigger"], source=row["source"],
                        detail=row["detail"], at=row["at"])


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec("jsonb", encoder=dumps, decoder=json.loads, schema="pg_catalog")


@contextlib.asynccontextmanager
async def _boundary() -> AsyncIterator[None]:
    """Driver errors become payflow errors here (and, for the group commit's writes, in `store_error`)."""
    try:
        yield
    except errors.PayflowError:
        raise
    except postgres_writes.DRIVER_ERRORS as exc:
        raise store_error(exc) from exc


async def _keep_session(connection: asyncpg.Connection) -> None:
    """A released connection goes back to the pool as it is: no reset query, so no round trip per release.
    payflow keeps no session state (no SET, LISTEN, cursors or held advisory locks: `migrate` unlocks, and a
    pool whose migration failed is closed); an open transaction is still rolled back by asyncpg first."""


def _pool_size(dsn: str) -> tuple[str, int]:
    """The URL without `pool_size`, and that size (POOL_SIZE when absent); other parameters stay server
    settings."""
    parts = urllib.parse.urlsplit(dsn)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    sizes = [value for key, value in query if key == "pool_size"]
    if not sizes:
        return dsn, POOL_SIZE
    if not sizes[-1].isdigit() or int(sizes[-1]) < 1:
        raise errors.SettingsError(f"PAYFLOW_DATABASE_URL: pool_size must be a positive integer, not {sizes[-1]!r}")
    rest = urllib.parse.urlencode([(key, value) for key, value in query if key != "pool_size"])
    return urllib.parse.urlunsplit(parts._replace(query=rest)), int(sizes[-1])


_CREATE_SQL = (f"WITH created AS (INSERT INTO payments ({', '.join(FIELDS)}) "
               f"VALUES ({', '.join(f'${i}' for i in range(1, len(FIELDS) + 1))}) RETURNING out_trade_no, created_at) "
               "INSERT INTO order_events (out_trade_no, from_state, to_state, trigger, source, detail, at) "
               f"SELECT out_trade_no, NULL, 'created', 'create', ${len(FIELDS) + 1}::text, "
               f"${len(FIELDS) + 2}::text::jsonb, created_at FROM created")


class PostgresStore(PostgresRefunds, PaymentStore):
    _boundary = staticmethod(_boundary)  # for PostgresRefunds, which cannot import this module

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.writes = GroupWriter(pool)

    @classmethod
    async def open(cls, dsn: str, *, min_size: int = 1, max_size: int | None = None) -> PostgresStore:
        async with _boundary():
            try:
                dsn, size = _pool_size(dsn)
                size = max_size or size
                pool = await asyncpg.create_pool(dsn, min_size=min(min_size, size), max_size=size,
                                                 init=_init_connection, reset=_keep_session, command_timeout=30)
            except (ValueError, OverflowError, TypeError) as exc:  # a URL the driver cannot parse
                # Not the driver's message: it may quote a piece of the URL, password included.
                raise errors.SettingsError(
                    f"PAYFLOW_DATABASE_URL: {logs.redact_url(dsn)!r} is not usable ({type(exc).__name__})") from None
            try:
                async with pool.acquire() as connection:
                    await migrate(connection)
            except BaseException:
                await pool.close()
                raise
        return cls(pool)

    async def close(self) -> None:
        try:
            await self.writes.close()  # what is queued still commits
        finally:
            await self._pool.close()

    async def ping(self) -> None:
        async with _boundary():
            await self._pool.fetchval("SELECT 1")

    # --- writes -------------------------------------------------------------------------------

    async def create(self, payment: models.Payment, *, source: str, detail: Mapping[str, Any]) -> models.Payment:
        if payment.state is not State.CREATED:
            raise errors.IllegalTransition("new", f"create as {payment.state.value}")
        values = list(ALL_FIELDS(payment))
        values[STATE], values[LEASE] = payment.state.value, None
        async with _boundary():
            try:
                # The row and its creation event in one statement: one round trip, committed together.
                await self._pool.execute(_CREATE_SQL, *values, str(source), dumps(dict(detail)))
            except asyncpg.UniqueViolationError as exc:
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
        values = transition_changes(payment, to, trigger, changes)
        return await self.writes.transition(Write(
            payment, to, trigger, values, source, at, detail, lease_token, notification,
            notification.outcome if notification is not None else "", refuse_recorded=False))

    async def decide(
        self,
        out_trade_no: str,
        decide: Decide,
        *,
        at: dt.datetime,
        notification: models.Notification | None = None,
    ) -> Decided:
        # One read (the payment and the dedupe row) and one write (the step with its event and notification
        # rows), each shared with whatever else is queued meanwhile: postgres_group_commit.
        return await self.writes.decide(out_trade_no, decide, at=at, notification=notification)

    async def reschedule(
        self, payment: models.Payment, *, next_attempt_at: dt.datetime | None, attempts: int, at: dt.datetime,
        note: Note | None = None,
    ) -> models.Payment:
        if payment.state in UNSCHEDULED:
            next_attempt_at = None
        async with _boundary():
            # One statement: the note's event row is written only if the CAS moved the row.
            row = await self._pool.fetchrow(
                "WITH moved AS (UPDATE payments SET next_attempt_at = $1, attempts = $2, lease_token = NULL, "
                "version = version + 1, updated_at = $3 WHERE out_trade_no = $4 AND state = $5 AND version = $6 "
                f"AND lease_token IS NOT DISTINCT FROM $7 RETURNING {_COLUMNS}), "
                "noted AS (INSERT INTO order_events (out_trade_no, from_state, to_state, trigger, source, detail, at) "
                "SELECT out_trade_no, $5, $5, $8::text, $9::text, $10::text::jsonb, $3 FROM moved "
                "WHERE $8::text IS NOT NULL) "
                "SELECT * FROM moved",
                next_attempt_at, attempts, at, payment.out_trade_no, payment.state.value, payment.version,
                payment.lease_token, note.trigger if note else None, note.source if note else None,
                dumps(dict(note.detail)) if note else None)
        if row is None:
            raise errors.StaleState(f"payment {payment.out_trade_no} changed or lost its lease")
        return _payment(row)

    async def claim(self, payment: models.Payment, *, now: dt.datetime, lease: float) -> models.Payment:
        async with _boundary():
            row = await self._pool.fetchrow(
                "UPDATE payments SET next_attempt_at = $1, "
                "lease_token = substr(md5(random()::text || clock_timestamp()::text || out_trade_no), 1, 16) "
                "WHERE out_trade_no = $2 AND state = $3 AND version = $4 "
                "AND (lease_token IS NULL OR next_attempt_at IS NULL OR next_attempt_at <= $5) "
                f"RETURNING {_COLUMNS}",
                now + dt.timedelta(seconds=lease), payment.out_trade_no, payment.state.value, payment.version, now)
        if row is None:
            raise errors.StaleState(f"payment {payment.out_trade_no} changed or is leased by another worker")
        return _payment(row)

    async def claim_due(self, now: dt.datetime, limit: int, lease: float) -> list[models.Payment]:
        if limit <= 0:
            return []
        async with _boundary():
            # SKIP LOCKED: replicas claiming at the same moment take disjoint sets instead of waiting.
            rows = await self._pool.fetch(
                "WITH due AS (SELECT out_trade_no, next_attempt_at AS due_at FROM payments "
                "  WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= $1 "
                "  ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) "
                "UPDATE payments AS p SET next_attempt_at = $2, "
                "lease_token = substr(md5(random()::text || clock_timestamp()::text || p.out_trade_no), 1, 16) "
                "FROM due WHERE p.out_trade_no = due.out_trade_no "
                f"RETURNING due.due_at, {', '.join('p.' + c for c in _COLUMNS.split(', '))}",
                now, now + dt.timedelta(seconds=lease), limit)
        ordered = sorted(rows, key=lambda r: (r["due_at"], r["out_trade_no"]))
        return [_payment(r) for r in ordered]

    async def record_notification(self, notification: models.Notification) -> bool:
        async with _boundary(), self._pool.acquire() as db:
            return await insert_notification(db, notification)

    async def record_event(self, payment: models.Payment, trigger: str, *, source: str, at: dt.datetime,
                           detail: Mapping[str, Any]) -> None:
        async with _boundary(), self._pool.acquire() as db:
            await _insert_event(db, payment.out_trade_no, payment.state, payment.state, trigger, source, detail, at)

    # --- reconciliation -----------------------------------------------------------------------

    async def start_reconciliation(self, bill_date: dt.date, at: dt.datetime) -> int | None:
        async with _boundary(), self._pool.acquire() as db, db.transaction():
            # Replicas of one database serialise here, per date, for the length of this transaction.
            await db.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"payflow:reconcile:{bill_date}")
            run_id = await db.fetchval(
                "INSERT INTO reconciliation_runs (bill_date, started_at, status, counts) "
                "SELECT $1, $2, 'running', '{}'::jsonb WHERE NOT EXISTS (SELECT 1 FROM reconciliation_runs "
                "WHERE bill_date = $1 AND status = 'running' AND started_at > $3) RETURNING id",
                bill_date, at, at - RUN_STALE_AFTER)
        return int(run_id) if run_id is not None else None

    async def finish_reconciliation(self, run_id: int, *, status: str, counts: Mapping[str, int],
                                    at: dt.datetime, error: str | None = None) -> None:
        async with _boundary():
            await self._pool.execute(
                "UPDATE reconciliation_runs SET status = $1, counts = $2, finished_at = $3, error = $4 WHERE id = $5",
                status, dict(counts), at, error, run_id)

    async def reconciliation_runs(self, bill_date: dt.date) -> list[models.ReconciliationRun]:
        async with _boundary():
            rows = await self._pool.fetch("SELECT * FROM reconciliation_runs WHERE bill_date = $1 ORDER BY id",
                                          bill_date)
        return [models.ReconciliationRun(**dict(row)) for row in rows]

    async def add_discrepancy(self, discrepancy: models.Discrepancy) -> bool:
        async with _boundary():
            status = await self._pool.execute(
                "INSERT INTO discrepancies (bill_date, out_trade_no, category, detail, found_at) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                discrepancy.bill_date, discrepancy.out_trade_no, discrepancy.category, discrepancy.detail,
                discrepancy.found_at)
        return str(status).endswith(" 1")

    async def discrepancies(self, bill_date: dt.date) -> list[models.Discrepancy]:
        async with _boundary():
            rows = await self._pool.fetch(
                "SELECT * FROM discrepancies WHERE bill_date = $1 ORDER BY category, out_trade_no", bill_date)
        return [models.Discrepancy(**dict(row)) for row in rows]

    async def mark_billed(self, bill_date: dt.date, out_trade_nos: Iterable[str]) -> None:
        async with _boundary():
            await self._pool.execute(
                "INSERT INTO billed (out_trade_no, bill_date) SELECT unnest($1::text[]), $2 ON CONFLICT DO NOTHING",
                list(out_trade_nos), bill_date)

    async def billed(self, out_trade_nos: Iterable[str]) -> set[str]:
        async with _boundary():
            rows = await self._pool.fetch("SELECT out_trade_no FROM billed WHERE out_trade_no = ANY($1::text[])",
                                          list(out_trade_nos))
        return {row[0] for row in rows}

    async def paid_between(self, start: dt.datetime, end: dt.datetime) -> list[models.Payment]:
        return await self._payments("paid_at IS NOT NULL AND paid_at >= $1 AND paid_at < $2 ORDER BY paid_at",
                                    start, end)

    # --- reads --------------------------------------------------------------------------------

    async def _payments(self, where: str, *params: Any) -> list[models.Payment]:
        async with _boundary():
            rows = await self._pool.fetch(f"SELECT {_COLUMNS} FROM payments WHERE {where}", *params)
        return [_payment(row) for row in rows]

    async def get(self, out_trade_no: str) -> models.Payment | None:
        found = await self._payments("out_trade_no = $1", out_trade_no)
        return found[0] if found else None

    async def get_by_order_id(self, order_id: str) -> models.Payment | None:
        found = await self._payments("order_id = $1 AND NOT order_released", order_id)
        return found[0] if found else None

    async def list_payments(self, *, state: State | None = None, after: str | None = None,
                            limit: int = 100) -> list[models.Payment]:
        if state is None:
            return await self._payments("out_trade_no > $1 ORDER BY out_trade_no LIMIT $2", after or "", limit)
        return await self._payments("out_trade_no > $1 AND state = $3 ORDER BY out_trade_no LIMIT $2",
                                    after or "", limit, State(state).value)

    async def list_stuck(self, *, created_before: dt.datetime, expired_before: dt.datetime,
                         after: tuple[dt.datetime, str] | None = None, limit: int = 100) -> list[models.Payment]:
        since = after or (dt.datetime.min.replace(tzinfo=dt.UTC), "")
        return await self._payments(
            "((state = 'created' AND created_at < $1) OR (state = 'prepaid' AND expires_at < $2) "
            " OR (state = 'notified' AND attempts > 0)) AND (created_at, out_trade_no) > ($3, $4) "
            "ORDER BY created_at, out_trade_no LIMIT $5", created_before, expired_before, since[0], since[1], limit)

    async def count_by_state(self) -> dict[State, int]:
        async with _boundary():
            rows = await self._pool.fetch("SELECT state, count(*) FROM payments GROUP BY state")
        return {State(row[0]): row[1] for row in rows}

    async def due_stats(self, now: dt.datetime) -> tuple[int, dt.datetime | None]:
        async with _boundary():
            row = await self._pool.fetchrow(
                "SELECT count(*), min(next_attempt_at) FROM payments "
                "WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= $1", now)
        return row[0], row[1]

    async def events(self, out_trade_no: str) -> list[models.Event]:
        async with _boundary():
            rows = await self._pool.fetch("SELECT * FROM order_events WHERE out_trade_no = $1 ORDER BY id",
                                          out_trade_no)
        return [_event(row) for row in rows]

    async def get_notification(self, notification_id: str) -> models.Notification | None:
        async with _boundary():
            row = await self._pool.fetchrow("SELECT * FROM notifications WHERE notification_id = $1",
                                            notification_id)
        return models.Notification(**dict(row)) if row is not None else None

    async def notifications(self, out_trade_no: str) -> list[models.Notification]:
        async with _boundary():
            rows = await self._pool.fetch("SELECT * FROM notifications WHERE out_trade_no = $1 "
                                          "ORDER BY received_at, notification_id", out_trade_no)
        return [models.Notification(**dict(row)) for row in rows]

    async def get_by_transaction_id(self, transaction_id: str) -> models.Payment | None:
        found = await self._payments("transaction_id = $1", transaction_id)
        return found[0] if found else None


async def _insert_event(db: asyncpg.Connection, out_trade_no: str, from_state: State | None, to_state: State,
                        trigger: str, source: str, detail: Mapping[str, Any] | None, at: dt.datetime) -> None:
    await db.execute(
        "INSERT INTO order_events (out_trade_no, from_state, to_state, trigger, source, detail, at) "
        "VALUES ($1, $2, $3, $4, $5, $6::text::jsonb, $7)",
        out_trade_no, from_state.value if from_state else None, to_state.value, trigger, str(source),
        dumps(dict(detail or {})), at)
