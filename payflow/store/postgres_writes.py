"""The PostgreSQL store's statements for decisions and transitions: a compare-and-set with its event and
notification rows as one statement, for one write or a whole batch of them (postgres_group_commit batches), the
reads a decision needs, and how driver errors become payflow errors."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from payflow import errors, models
from payflow.states import State, Trigger
from payflow.store import CHANGEABLE
from payflow.store.postgres_schema import NOTIFICATION_RECORDED

# The unique key whose violation means "this notification is already recorded".
NOTIFICATION_KEY = "notifications_pkey"
# The type of each column a transition may change, for the batch statement's arrays.
_CHANGE_TYPES = {"prepay_id": "text", "transaction_id": "text", "paid_at": "timestamptz", "paid_amount": "integer",
                 "next_attempt_at": "timestamptz", "attempts": "integer", "order_released": "boolean",
                 "pay_url": "text"}
if not CHANGEABLE <= _CHANGE_TYPES.keys():
    raise ImportError(f"postgres_writes: no column type for {sorted(CHANGEABLE - _CHANGE_TYPES.keys())}")
_CHANGED = tuple(sorted(CHANGEABLE))


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


# A Payment's fields in constructor order (they are also the column names), selected in that order so a row
# maps by position.
FIELDS = tuple(field.name for field in dataclasses.fields(models.Payment))
ALL_FIELDS = operator.attrgetter(*FIELDS)
STATE, LEASE = FIELDS.index("state"), FIELDS.index("lease_token")


def positional(row: Sequence[Any]) -> models.Payment | None:
    """A payment selected as FIELDS (then anything), or None for the all-NULL row of a LEFT JOIN."""
    values = list(row[:len(FIELDS)])
    if values[0] is None:
        return None
    values[STATE] = State(values[STATE])
    return models.Payment(*values)


# --- one statement per write ------------------------------------------------------------------------

# A decision's read: the payment (all NULL when there is none) and whether the notification is recorded.
READ_ONE = (f"SELECT {', '.join('p.' + name for name in FIELDS)}, "
            "EXISTS (SELECT 1 FROM notifications WHERE notification_id = $2) "
            "FROM (SELECT) AS one LEFT JOIN payments AS p ON p.out_trade_no = $1")
_INSERT_NOTIFICATION = (
    "INSERT INTO notifications (notification_id, out_trade_no, event_type, outcome, resource, received_at) "
    "VALUES ($1, $2, $3, $4, $5::text::jsonb, $6) ON CONFLICT (notification_id) DO NOTHING")


@dataclasses.dataclass(frozen=True, slots=True)
class Write:
    """A step to write: a CAS transition (`to` set) with its event row and, if given, the notification row; or,
    with `to` None, the notification row alone. `refuse_recorded`: a notification recorded meanwhile voids the
    whole write (a decision's rule) instead of being skipped (a transition's)."""

    payment: models.Payment | None
    to: State | None
    trigger: Trigger | None
    values: Mapping[str, Any]
    source: str
    at: dt.datetime
    detail: Mapping[str, Any] | None
    lease_token: str | None
    notification: models.Notification | None
    outcome: str
    refuse_recorded: bool

    @property
    def out_trade_no(self) -> str | None:
        if self.payment is not None:
            return self.payment.out_trade_no
        return self.notification.out_trade_no if self.notification is not None else None


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What a write did. `moved`: the payment as written (None: no transition written: none asked, or the CAS
    lost). `recorded`: the notification was recorded by someone else first, and nothing of this write was kept."""

    moved: models.Payment | None = None
    recorded: bool = False


def notification_params(notification: models.Notification, outcome: str) -> tuple[Any, ...]:
    # The decrypted resource as WeChat sent it, when known: parsed once, by PostgreSQL, not re-encoded here.
    resource = notification.resource_json if notification.resource_json is not None else dumps(notification.resource)
    return (notification.notification_id, notification.out_trade_no, notification.event_type, outcome, resource,
            notification.received_at)


async def insert_notification(db: asyncpg.Connection, notification: models.Notification,
                              outcome: str | None = None) -> bool:
    """Record the notification (with `outcome`, if given, instead of its own); False when its id was recorded."""
    status = await db.execute(_INSERT_NOTIFICATION, *notification_params(
        notification, notification.outcome if outcome is None else outcome))
    return bool(status.endswith(" 1"))


def _cas_sql(columns: tuple[str, ...], *, notification: bool, refuse_recorded: bool) -> str:
    """One statement: the compare-and-set on (out_trade_no, state, version), its event row, and the notification
    row if any, the inserts reading the UPDATE's output so they happen only if the CAS matched. It returns the
    payment as written (as FIELDS), or no row when the CAS lost (then nothing was written).

    Parameters: $1 to, $2 lease_token, $3 at, $4 out_trade_no, $5 from, $6 version, $7 trigger, $8 source,
    $9 event detail (JSON text), then one per changed column, then the notification's six. With
    `refuse_recorded`, a notification id recorded meanwhile by a concurrent delivery (the INSERT waits for it and
    then inserts nothing) aborts the whole statement as a duplicate key: not a row of it is kept.
    """
    first = 10
    assignments = "".join(f", {column} = ${first + i}" for i, column in enumerate(columns))
    fields = ", ".join(FIELDS)
    sql = ("WITH moved AS (UPDATE payments SET state = $1, version = version + 1, lease_token = $2, "
           f"updated_at = $3{assignments} WHERE out_trade_no = $4 AND state = $5 AND version = $6 "
           f"RETURNING {fields}), "
           "event AS (INSERT INTO order_events (out_trade_no, from_state, to_state, trigger, source, detail, at) "
           "SELECT out_trade_no, $5::text, $1::text, $7::text, $8::text, $9::text::jsonb, $3 FROM moved)")
    if notification:
        n = first + len(columns)
        sql += (", noted AS (INSERT INTO notifications (notification_id, out_trade_no, event_type, outcome, "
                f"resource, received_at) SELECT ${n}::text, ${n + 1}::text, ${n + 2}::text, ${n + 3}::text, "
                f"${n + 4}::text::jsonb, ${n + 5}::timestamptz FROM moved "
                "ON CONFLICT (notification_id) DO NOTHING RETURNING 1)")
        if refuse_recorded:
            return (f"{sql} SELECT {fields}, CASE WHEN NOT EXISTS (SELECT 1 FROM noted) "
                    f"THEN {NOTIFICATION_RECORDED}(${n}::text) END FROM moved")
    return f"{sql} SELECT {fields} FROM moved"


# The CAS statement for each (changed columns, with a notification, refusing a recorded one): a handful exist.
_CAS_SQL: dict[tuple[tuple[str, ...], bool, bool], str] = {}


async def write_one(db: asyncpg.Connection, write: Write) -> Outcome:
    """`write` as its own statement (committed on its own)."""
    if write.to is None:
        assert write.notification is not None
        return Outcome(recorded=not await insert_notification(db, write.notification, write.outcome))
    assert write.payment is not None and write.trigger is not None
    payment, columns = write.payment, tuple(write.values)
    key = (columns, write.notification is not None, write.refuse_recorded)
    sql = _CAS_SQL.get(key)
    if sql is None:
        sql = _CAS_SQL[key] = _cas_sql(columns, notification=key[1], refuse_recorded=key[2])
    params: tuple[Any, ...] = (
        write.to.value, write.lease_token, write.at, payment.out_trade_no, payment.state.value, payment.version,
        write.trigger.value, str(write.source), dumps(dict(write.detail or {})), *write.values.values())
    if write.notification is not None:
        params += notification_params(write.notification, write.outcome)
    try:
        row = await db.fetchrow(sql, *params)
    except asyncpg.UniqueViolationError as exc:
        if not write.refuse_recorded or exc.constraint_name != NOTIFICATION_KEY:
            raise
        return Outcome(recorded=True)
    return Outcome(positional(row)) if row is not None else Outcome()


# --- one statement per batch ------------------------------------------------------------------------

_READ_MANY = (f"SELECT {', '.join('p.' + name for name in FIELDS)}, "
              "EXISTS (SELECT 1 FROM notifications AS n WHERE n.notification_id = r.nid), r.i "
              "FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS r(no, nid, i) "
              "LEFT JOIN payments AS p ON p.out_trade_no = r.no")
_ITEM_COLUMNS = (("i", "integer"), ("no", "text"), ("from_state", "text"), ("version", "integer"),
                 ("to_state", "text"), ("lease", "text"), ("at", "timestamptz"), ("trig", "text"), ("source", "text"),
                 ("detail", "text"), ("refuse", "boolean"), ("nid", "text"), ("n_no", "text"), ("n_type", "text"),
                 ("n_outcome", "text"), ("n_resource", "text"), ("n_at", "timestamptz"),
                 *((f"{prefix}{column}", kind) for column in _CHANGED
                   for prefix, kind in (("set_", "boolean"), ("new_", _CHANGE_TYPES[column]))))


def _write_many_sql() -> str:
    """Every write of a batch in one statement, item by item what `_cas_sql` does for one: the CAS of each item
    that has a transition (a changed column is set where the item's `set_` flag says so), the event rows of
    those that matched, and the notification rows of those that matched or have no transition. One row per
    item: its index, whether its notification row went in, and the payment as written (NULLs if none). An item
    refusing a notification recorded meanwhile makes the whole statement fail (the batch is then written item
    by item)."""
    arrays = ", ".join(f"${n}::{kind}[]" for n, (_, kind) in enumerate(_ITEM_COLUMNS, start=1))
    names = ", ".join(name for name, _ in _ITEM_COLUMNS)
    changes = "".join(f", {c} = CASE WHEN b.set_{c} THEN b.new_{c} ELSE p.{c} END" for c in _CHANGED)
    fields = ", ".join(f"p.{name}" for name in FIELDS)
    return (
        f"WITH b AS MATERIALIZED (SELECT * FROM unnest({arrays}) AS b({names})), "
        "moved AS (UPDATE payments AS p SET state = b.to_state, version = p.version + 1, lease_token = b.lease, "
        f"updated_at = b.at{changes} FROM b WHERE b.to_state IS NOT NULL AND p.out_trade_no = b.no "
        f"AND p.state = b.from_state AND p.version = b.version RETURNING b.i, {fields}), "
        "event AS (INSERT INTO order_events (out_trade_no, from_state, to_state, trigger, source, detail, at) "
        "SELECT b.no, b.from_state, b.to_state, b.trig, b.source, b.detail::jsonb, b.at "
        "FROM b JOIN moved ON moved.i = b.i), "
        "noted AS (INSERT INTO notifications (notification_id, out_trade_no, event_type, outcome, resource, "
        "received_at) SELECT b.nid, b.n_no, b.n_type, b.n_outcome, b.n_resource::jsonb, b.n_at FROM b "
        "WHERE b.nid IS NOT NULL AND (b.to_state IS NULL OR EXISTS (SELECT 1 FROM moved WHERE moved.i = b.i)) "
        "ON CONFLICT (notification_id) DO NOTHING RETURNING notification_id) "
        f"SELECT {', '.join(f'moved.{name}' for name in FIELDS)}, b.i, noted.notification_id IS NOT NULL, "
        f"CASE WHEN b.refuse AND moved.i IS NOT NULL AND noted.notification_id IS NULL "
        f"THEN {NOTIFICATION_RECORDED}(b.nid) END "
        "FROM b LEFT JOIN moved ON moved.i = b.i LEFT JOIN noted ON noted.notification_id = b.nid")


_WRITE_MANY = _write_many_sql()


def _write_many_params(writes: Sequence[Write]) -> list[list[Any]]:
    columns: list[list[Any]] = [[] for _ in _ITEM_COLUMNS]
    for i, write in enumerate(writes):
        payment, note, values = write.payment, write.notification, write.values
        row: list[Any] = [
            i, write.out_trade_no, payment.state.value if payment is not None else None,
            payment.version if payment is not None else None, write.to.value if write.to is not None else None,
            write.lease_token, write.at, write.trigger.value if write.trigger is not None else None,
            str(write.source), dumps(dict(write.detail or {})), write.refuse_recorded,
            *(notification_params(note, write.outcome) if note is not None else (None,) * 6)]
        for column in _CHANGED:
            row += (column in values, values.get(column))
        for target, value in zip(columns, row, strict=True):
            target.append(value)
    return columns


async def write_many(db: asyncpg.Connection, writes: Sequence[Write]) -> list[Outcome]:
    """All of `writes` (distinct payments, distinct notification ids) in one statement, committed once; raises
    `asyncpg.PostgresError` with nothing written when the statement as a whole failed."""
    rows = await db.fetch(_WRITE_MANY, *_write_many_params(writes))
    outcomes = [Outcome()] * len(writes)
    for row in rows:
        i, noted = row[len(FIELDS)], row[len(FIELDS) + 1]
        write = writes[i]
        # A transition whose notification was recorded meanwhile: skipped for a transition's write, and for a
        # decision's the statement failed. A notification row alone: not inserted means recorded before.
        outcomes[i] = Outcome(positional(row), recorded=write.to is None and not noted)
    return outcomes


async def read_many(db: asyncpg.Connection,
                    keys: Sequence[tuple[str, str | None]]) -> list[tuple[models.Payment | None, bool]]:
    """For each (out_trade_no, notification_id or None): the payment, and whether the notification is recorded;
    one statement."""
    if len(keys) == 1:
        row = await db.fetchrow(READ_ONE, *keys[0])
        return [(positional(row), bool(row[len(FIELDS)]))]
    rows = await db.fetch(_READ_MANY, [no for no, _ in keys], [nid for _, nid in keys])
    found: list[tuple[models.Payment | None, bool]] = [(None, False)] * len(keys)
    for row in rows:
        found[row[len(FIELDS) + 1] - 1] = (positional(row), bool(row[len(FIELDS)]))
    return found


DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, ConnectionError,
                 TimeoutError)


def store_error(exc: BaseException) -> Exception:
    """A driver error as the payflow error the store raises for it."""
    if isinstance(exc, errors.PayflowError):
        return exc
    if isinstance(exc, asyncpg.UniqueViolationError):
        return errors.DuplicatePayment(str(exc))
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        return errors.Conflict(f"constraint violated: {exc}")
    if isinstance(exc, Exception) and not isinstance(exc, DRIVER_ERRORS):
        return exc  # a bug: shown as it is, not as an outage
    return errors.StoreUnavailable(f"PostgreSQL: {type(exc).__name__}: {exc}")

