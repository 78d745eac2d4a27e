"""The PostgreSQL store's refund verbs (`PaymentStore`'s refunds section), with the SQLite store's semantics
(sqlite_refunds). Refunds are rare beside notifications: no group commit, each write its own statement (or, for
a creation, its own short transaction), and rows map by name.

What can still be refunded is checked under a transaction-scoped advisory lock per payment, so creations for one
payment serialise across every replica on the database without locking the payment's row (which the group
commit's batched writes of other payments would then wait for)."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg

from payflow import errors, models
from payflow.states.refunds import COUNTED, RefundState, RefundTrigger
from payflow.store import Note, refund_changes
from payflow.store.postgres_writes import dumps, notification_params

REFUND_FIELDS = tuple(field.name for field in dataclasses.fields(models.Refund))
REFUND_COLUMNS = ", ".join(REFUND_FIELDS)
_COUNTED = sorted(state.value for state in COUNTED)
# The event row of whatever the CTE `moved` wrote: $1 from, $2 to, $3 trigger, $4 source, $5 detail, $6 at.
_EVENT_OF_MOVED = ("INSERT INTO refund_events (out_refund_no, from_state, to_state, trigger, source, detail, at) "
                   "SELECT out_refund_no, $1::text, $2::text, $3::text, $4::text, $5::text::jsonb, $6::timestamptz "
                   "FROM moved")
_CREATE = (f"WITH moved AS (INSERT INTO refunds ({REFUND_COLUMNS}) "
           f"VALUES ({', '.join(f'${i}' for i in range(7, 7 + len(REFUND_FIELDS)))}) "
           f"ON CONFLICT (out_refund_no) DO NOTHING RETURNING out_refund_no), "
           f"event AS ({_EVENT_OF_MOVED}) SELECT count(*) FROM moved")


def refund_row(row: asyncpg.Record) -> models.Refund:
    return models.Refund(**{name: row[name] for name in REFUND_FIELDS} | {"state": RefundState(row["state"])})


def _value(value: Any) -> Any:
    return value.value if isinstance(value, RefundState) else value


class PostgresRefunds:
    """Mixed into `PostgresStore`, which provides `_pool` and `_boundary` (driver errors as payflow errors)."""

    _pool: asyncpg.Pool
    _boundary: Callable[[], contextlib.AbstractAsyncContextManager[None]]

    async def _refunds(self, where: str, *params: Any) -> list[models.Refund]:
        async with self._boundary():
            rows = await self._pool.fetch(f"SELECT {REFUND_COLUMNS} FROM refunds WHERE {where}", *params)
        return [refund_row(row) for row in rows]

    async def create_refund(self, refund: models.Refund, *, refundable: int, source: str,
                            detail: Mapping[str, Any]) -> tuple[models.Refund, bool]:
        if refund.state is not RefundState.CREATED:
            raise errors.IllegalTransition("new", f"create as {refund.state.value}")
        select = f"SELECT {REFUND_COLUMNS} FROM refunds WHERE out_refund_no = $1"
        async with self._boundary(), self._pool.acquire() as db, db.transaction():
            existing = await db.fetchrow(select, refund.out_refund_no)
            if existing is not None:
                return refund_row(existing), False
            if await db.fetchval("SELECT 1 FROM payments WHERE out_trade_no = $1", refund.out_trade_no) is None:
                raise errors.NotFound(f"no payment with out_trade_no {refund.out_trade_no!r}")
            # Until this transaction ends, no other creation for this payment runs past here, on any replica.
            # Later statements read what those before it committed (READ COMMITTED: a snapshot per statement).
            await db.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"payflow:refunds:{refund.out_trade_no}")
            existing = await db.fetchrow(select, refund.out_refund_no)  # created meanwhile, for this payment
            if existing is not None:
                return refund_row(existing), False
            counted = await db.fetchval(
                "SELECT coalesce(sum(amount), 0) FROM refunds WHERE out_trade_no = $1 AND state = ANY($2::text[])",
                refund.out_trade_no, _COUNTED)
            if counted + refund.amount > refundable:
                raise errors.RefundExceedsPayment(
                    f"refunds of {refund.out_trade_no} would reach {counted + refund.amount} fen; "
                    f"{max(refundable - counted, 0)} of {refundable} are left to refund",
                    refundable=max(refundable - counted, 0))
            try:
                # The row and its creation event in one statement, or neither.
                inserted = await db.fetchval(
                    _CREATE, None, RefundState.CREATED.value, "create", str(source), dumps(dict(detail)),
                    refund.created_at, *(_value(getattr(refund, name)) for name in REFUND_FIELDS))
            except asyncpg.UniqueViolationError as exc:  # the event_id, which is random: not a caller's mistake
                raise errors.Conflict(f"refund {refund.out_refund_no!r} collides with a stored one") from exc
            if not inserted:  # created meanwhile under the same out_refund_no for another payment
                found = await db.fetchrow(select, refund.out_refund_no)
                assert found is not None
                return refund_row(found), False
        return refund, True

    async def get_refund(self, out_refund_no: str) -> models.Refund | None:
        found = await self._refunds("out_refund_no = $1", out_refund_no)
        return found[0] if found else None

    async def refunds_of(self, out_trade_no: str) -> list[models.Refund]:
        return await self._refunds("out_trade_no = $1 ORDER BY created_at, out_refund_no", out_trade_no)

    async def transition_refund(
        self,
        refund: models.Refund,
        to: RefundState,
        trigger: RefundTrigger,
        *,
        source: str,
        at: dt.datetime,
        detail: Mapping[str, Any] | None = None,
        changes: Mapping[str, Any] | None = None,
        notification: models.Notification | None = None,
    ) -> models.Refund:
        to, trigger = RefundState(to), RefundTrigger(trigger)
        values = refund_changes(refund, to, trigger, changes)
        # One statement: the CAS, then its event row and the notification row, written only if the CAS matched.
        first = 9
        assignments = "".join(f", {column} = ${first + i}" for i, column in enumerate(values))
        params: list[Any] = [refund.state.value, to.value, trigger.value, str(source), dumps(dict(detail or {})),
                             at, refund.out_refund_no, refund.version,
                             *(_value(value) for value in values.values())]
        sql = (f"WITH moved AS (UPDATE refunds SET state = $2, version = version + 1, lease_token = NULL, "
               f"updated_at = $6{assignments} WHERE out_refund_no = $7 AND state = $1 AND version = $8 "
               f"RETURNING {REFUND_COLUMNS}), event AS ({_EVENT_OF_MOVED})")
        if notification is not None:
            n = first + len(values)
            sql += (", noted AS (INSERT INTO notifications (notification_id, out_trade_no, event_type, outcome, "
                    f"resource, received_at) SELECT ${n}::text, ${n + 1}::text, ${n + 2}::text, ${n + 3}::text, "
                    f"${n + 4}::text::jsonb, ${n + 5}::timestamptz FROM moved "
                    "ON CONFLICT (notification_id) DO NOTHING)")
            params += notification_params(notification, notification.outcome)
        sql += f" SELECT {REFUND_COLUMNS} FROM moved"
        async with self._boundary():
            row = await self._pool.fetchrow(sql, *params)
        if row is None:
            raise errors.StaleState(f"refund {refund.out_refund_no} is no longer {refund.state.value} "
                                    f"v{refund.version}")
        return refund_row(row)

    async def reschedule_refund(self, refund: models.Refund, *, next_attempt_at: dt.datetime | None, attempts: int,
                                at: dt.datetime, note: Note | None = None) -> models.Refund:
        async with self._boundary():
            # One statement: the note's event row is written only if the CAS moved the row.
            row = await self._pool.fetchrow(
                "WITH moved AS (UPDATE refunds SET next_attempt_at = $7, attempts = $8, lease_token = NULL, "
                "version = version + 1, updated_at = $6 WHERE out_refund_no = $9 AND state = $1 AND version = $10 "
                f"AND lease_token IS NOT DISTINCT FROM $11 RETURNING {REFUND_COLUMNS}), "
                f"event AS ({_EVENT_OF_MOVED} WHERE $3::text IS NOT NULL) "
                f"SELECT {REFUND_COLUMNS} FROM moved",
                refund.state.value, refund.state.value, note.trigger if note else None,
                str(note.source) if note else None, dumps(dict(note.detail)) if note else None, at,
                next_attempt_at, attempts, refund.out_refund_no, refund.version, refund.lease_token)
        if row is None:
            raise errors.StaleState(f"refund {refund.out_refund_no} changed or lost its lease")
        return refund_row(row)

    async def claim_due_refunds(self, now: dt.datetime, limit: int, lease: float) -> list[models.Refund]:
        if limit <= 0:
            return []
        async with self._boundary():
            # SKIP LOCKED: replicas claiming at the same moment take disjoint sets instead of waiting.
            rows = await self._pool.fetch(
                "WITH due AS (SELECT out_refund_no, next_attempt_at AS due_at FROM refunds "
                "  WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= $1 "
                "  ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) "
                "UPDATE refunds AS r SET next_attempt_at = $2, "
                "lease_token = substr(md5(random()::text || clock_timestamp()::text || r.out_refund_no), 1, 16) "
                "FROM due WHERE r.out_refund_no = due.out_refund_no "
                f"RETURNING due.due_at, {', '.join('r.' + name for name in REFUND_FIELDS)}",
                now, now + dt.timedelta(seconds=lease), limit)
        ordered = sorted(rows, key=lambda r: (r["due_at"], r["out_refund_no"]))
        return [refund_row(row) for row in ordered]

    async def refund_events(self, out_refund_no: str) -> list[models.RefundEvent]:
        async with self._boundary():
            rows = await self._pool.fetch("SELECT * FROM refund_events WHERE out_refund_no = $1 ORDER BY id",
                                          out_refund_no)
        return [models.RefundEvent(
            id=row["id"], out_refund_no=row["out_refund_no"],
            from_state=RefundState(row["from_state"]) if row["from_state"] else None,
            to_state=RefundState(row["to_state"]), trigger=row["trigger"], source=row["source"],
            detail=row["detail"], at=row["at"]) for row in rows]

    async def count_refunds_by_state(self) -> dict[RefundState, int]:
        async with self._boundary():
            rows = await self._pool.fetch("SELECT state, count(*) FROM refunds GROUP BY state")
        return {RefundState(row[0]): row[1] for row in rows}

    async def refunds_succeeded_between(self, start: dt.datetime, end: dt.datetime) -> list[models.Refund]:
        return await self._refunds(
            "succeeded_at IS NOT NULL AND succeeded_at >= $1 AND succeeded_at < $2 ORDER BY succeeded_at, "
            "out_refund_no", start, end)

    async def mark_refund_billed(self, out_refund_no: str, bill_date: dt.date) -> None:
        async with self._boundary():
            await self._pool.execute("UPDATE refunds SET billed_on = $1 WHERE out_refund_no = $2 AND billed_on IS NULL",
                                     bill_date, out_refund_no)
