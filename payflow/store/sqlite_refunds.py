"""The SQLite store's refund verbs (`PaymentStore`'s refunds section): the same group-commit writer and read
connection as payments, the same CAS-plus-event-row rule. Refunds are rare beside notifications, so rows map by
name here rather than by position."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import secrets
import sqlite3
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from payflow import errors, models
from payflow.states.refunds import COUNTED, RefundState, RefundTrigger
from payflow.store import Note, refund_changes
from payflow.store.sqlite_schema import insert_notification, to_json, ts

if TYPE_CHECKING:
    from payflow.store.group_commit import GroupCommitWriter

REFUND_FIELDS = tuple(field.name for field in dataclasses.fields(models.Refund))
REFUND_COLUMNS = ", ".join(REFUND_FIELDS)
SELECT_REFUND = f"SELECT {REFUND_COLUMNS} FROM refunds WHERE out_refund_no = ?"
_COUNTED_SQL = ", ".join(f"'{s.value}'" for s in sorted(COUNTED))
_TIMES = ("created_at", "updated_at", "succeeded_at", "next_attempt_at")


def refund_row(row: sqlite3.Row) -> models.Refund:
    values: dict[str, Any] = dict(zip(REFUND_FIELDS, row, strict=True))
    for name in _TIMES:
        if values[name] is not None:
            values[name] = dt.datetime.fromisoformat(values[name])
    values["state"] = RefundState(values["state"])
    if values["billed_on"] is not None:
        values["billed_on"] = dt.date.fromisoformat(values["billed_on"])
    return models.Refund(**values)


def _column(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return ts(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, RefundState):
        return value.value
    return value


def insert_refund_event(db: sqlite3.Connection, out_refund_no: str, from_state: RefundState | None,
                        to_state: RefundState, trigger: str, source: str, detail: Mapping[str, Any] | None,
                        at: dt.datetime) -> None:
    db.execute(
        "INSERT INTO refund_events (out_refund_no, from_state, to_state, trigger, source, detail, at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (out_refund_no, from_state.value if from_state else None, to_state.value, trigger, str(source),
         to_json(detail), ts(at)))


def _select_refund(db: sqlite3.Connection, out_refund_no: str) -> models.Refund | None:
    rows = db.execute(SELECT_REFUND, (out_refund_no,)).fetchall()
    return refund_row(rows[0]) if rows else None


class SqliteRefunds:
    """Mixed into `SqliteStore`, which provides `writes` (the group-commit writer) and `_fetchall`."""

    writes: GroupCommitWriter
    _fetchall: Any
    _stats: Any

    async def create_refund(self, refund: models.Refund, *, refundable: int, source: str,
                            detail: Mapping[str, Any]) -> tuple[models.Refund, bool]:
        if refund.state is not RefundState.CREATED:
            raise errors.IllegalTransition("new", f"create as {refund.state.value}")

        def work(db: sqlite3.Connection) -> tuple[models.Refund, bool]:
            # One writer: the sum and the insert cannot interleave with another refund of the payment.
            existing = _select_refund(db, refund.out_refund_no)
            if existing is not None:
                return existing, False
            if not db.execute("SELECT 1 FROM payments WHERE out_trade_no = ?", (refund.out_trade_no,)).fetchall():
                raise errors.NotFound(f"no payment with out_trade_no {refund.out_trade_no!r}")
            (counted,) = db.execute(
                f"SELECT coalesce(sum(amount), 0) FROM refunds WHERE out_trade_no = ? AND state IN ({_COUNTED_SQL})",
                (refund.out_trade_no,)).fetchone()
            if counted + refund.amount > refundable:
                raise errors.RefundExceedsPayment(
                    f"refunds of {refund.out_trade_no} would reach {counted + refund.amount} fen; "
                    f"{max(refundable - counted, 0)} of {refundable} are left to refund",
                    refundable=max(refundable - counted, 0))
            try:
                db.execute(f"INSERT INTO refunds ({REFUND_COLUMNS}) VALUES ({', '.join('?' * len(REFUND_FIELDS))})",
                           tuple(_column(getattr(refund, name)) for name in REFUND_FIELDS))
            except sqlite3.IntegrityError as exc:  # the event_id, which is random: not a caller's mistake
                raise errors.Conflict(f"refund {refund.out_refund_no!r} collides with a stored one") from exc
            insert_refund_event(db, refund.out_refund_no, None, RefundState.CREATED, "create", source, detail,
                                refund.created_at)
            return refund, True

        return await self.writes.submit(work)

    async def get_refund(self, out_refund_no: str) -> models.Refund | None:
        rows = await self._fetchall(SELECT_REFUND, (out_refund_no,))
        return refund_row(rows[0]) if rows else None

    async def refunds_of(self, out_trade_no: str) -> list[models.Refund]:
        rows = await self._fetchall(
            f"SELECT {REFUND_COLUMNS} FROM refunds WHERE out_trade_no = ? ORDER BY created_at, out_refund_no",
            (out_trade_no,))
        return [refund_row(row) for row in rows]

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

        def work(db: sqlite3.Connection) -> models.Refund:
            assignments = "".join(f", {column} = ?" for column in values)
            rows = db.execute(
                f"UPDATE refunds SET state = ?, version = version + 1, lease_token = NULL, updated_at = ?{assignments} "
                f"WHERE out_refund_no = ? AND state = ? AND version = ? RETURNING {REFUND_COLUMNS}",
                (to.value, ts(at), *(_column(v) for v in values.values()), refund.out_refund_no, refund.state.value,
                 refund.version)).fetchall()
            if len(rows) != 1:
                raise errors.StaleState(f"refund {refund.out_refund_no} is no longer {refund.state.value} "
                                        f"v{refund.version}")
            insert_refund_event(db, refund.out_refund_no, refund.state, to, trigger.value, source, detail, at)
            if notification is not None:
                insert_notification(db, notification)
            return refund_row(rows[0])

        return await self.writes.submit(work)

    async def reschedule_refund(self, refund: models.Refund, *, next_attempt_at: dt.datetime | None, attempts: int,
                                at: dt.datetime, note: Note | None = None) -> models.Refund:
        def work(db: sqlite3.Connection) -> models.Refund:
            rows = db.execute(
                "UPDATE refunds SET next_attempt_at = ?, attempts = ?, lease_token = NULL, version = version + 1, "
                "updated_at = ? WHERE out_refund_no = ? AND state = ? AND version = ? AND lease_token IS ? "
                f"RETURNING {REFUND_COLUMNS}",
                (ts(next_attempt_at), attempts, ts(at), refund.out_refund_no, refund.state.value, refund.version,
                 refund.lease_token)).fetchall()
            if len(rows) != 1:
                raise errors.StaleState(f"refund {refund.out_refund_no} changed or lost its lease")
            if note is not None:
                insert_refund_event(db, refund.out_refund_no, refund.state, refund.state, note.trigger, note.source,
                                    note.detail, at)
            return refund_row(rows[0])

        return await self.writes.submit(work)

    async def claim_due_refunds(self, now: dt.datetime, limit: int, lease: float) -> list[models.Refund]:
        if limit <= 0:
            return []
        until = ts(now + dt.timedelta(seconds=lease))

        def work(db: sqlite3.Connection) -> list[models.Refund]:
            ids = [row[0] for row in db.execute(
                "SELECT out_refund_no FROM refunds WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= ? "
                "ORDER BY next_attempt_at LIMIT ?", (ts(now), limit)).fetchall()]
            claimed = []
            for out_refund_no in ids:
                rows = db.execute(
                    "UPDATE refunds SET next_attempt_at = ?, lease_token = ? WHERE out_refund_no = ? "
                    f"RETURNING {REFUND_COLUMNS}", (until, secrets.token_hex(8), out_refund_no)).fetchall()
                claimed.append(refund_row(rows[0]))
            return claimed

        return await self.writes.submit(work)

    async def refund_events(self, out_refund_no: str) -> list[models.RefundEvent]:
        rows = await self._fetchall("SELECT * FROM refund_events WHERE out_refund_no = ? ORDER BY id", (out_refund_no,))
        return [models.RefundEvent(
            id=row["id"], out_refund_no=row["out_refund_no"],
            from_state=RefundState(row["from_state"]) if row["from_state"] else None,
            to_state=RefundState(row["to_state"]), trigger=row["trigger"], source=row["source"],
            detail=json.loads(row["detail"]), at=dt.datetime.fromisoformat(row["at"])) for row in rows]

    async def count_refunds_by_state(self) -> dict[RefundState, int]:
        rows = await self._fetchall("SELECT state, count(*) FROM refunds GROUP BY state", (), on=self._stats)
        return {RefundState(row[0]): row[1] for row in rows}

    async def refunds_succeeded_between(self, start: dt.datetime, end: dt.datetime) -> list[models.Refund]:
        rows = await self._fetchall(
            f"SELECT {REFUND_COLUMNS} FROM refunds WHERE succeeded_at IS NOT NULL AND succeeded_at >= ? "
            "AND succeeded_at < ? ORDER BY succeeded_at", (ts(start), ts(end)))
        return [refund_row(row) for row in rows]

    async def mark_refund_billed(self, out_refund_no: str, bill_date: dt.date) -> None:
        await self.writes.submit(lambda db: db.execute(
            "UPDATE refunds SET billed_on = ? WHERE out_refund_no = ? AND billed_on IS NULL",
            (bill_date.isoformat(), out_refund_no)))
