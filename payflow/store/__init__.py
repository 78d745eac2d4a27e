"""The `PaymentStore` interface (domain verbs, no SQL) and `open_store(url)`, which picks a backend."""

from __future__ import annotations

import abc
import dataclasses
import datetime as dt
import enum
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from payflow import errors, logs, models, states
from payflow.states import State, Trigger
from payflow.states import refunds as refund_states
from payflow.states.refunds import RefundState, RefundTrigger
from payflow.states.table import Table

# Columns a transition or reschedule may change besides state and version.
CHANGEABLE = frozenset({"prepay_id", "transaction_id", "paid_at", "paid_amount", "next_attempt_at", "attempts",
                        "order_released", "pay_url"})
# States the sweeper never visits: their schedule is cleared by the store, whatever the caller asked.
# A `closed` payment is scheduled once, to tell the backend `payment.closed` (the `close` step sets it due).
UNSCHEDULED = frozenset({State.SYNCED, State.RECONCILED, State.NEEDS_REVIEW, State.REFUNDED})
# Columns a refund's transition may change besides state and version.
REFUND_CHANGEABLE = frozenset({"refund_id", "succeeded_at", "next_attempt_at", "attempts", "failure"})
# A reconciliation run still `running` after this long is taken to have died with its process.
RUN_STALE_AFTER = dt.timedelta(hours=1)
# How often `decide` re-reads and decides again while concurrent writers keep winning the CAS.
DECIDE_RETRIES = 5


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    """What to do with a payment, decided from the payment as it stands when the step is written.

    `to` None (and `trigger` None): no transition; the notification row, if any, is still recorded with
    `outcome`. Otherwise `to` is what `states.plan` said `trigger` does to the payment decided on.
    """

    outcome: str
    trigger: Trigger | None = None
    to: State | None = None
    source: str = ""
    detail: Mapping[str, Any] | None = None
    changes: Mapping[str, Any] | None = None
    lease_token: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Decided:
    """The result of `PaymentStore.decide`; `step` None means the notification was already recorded."""

    step: Step | None
    before: models.Payment | None  # as `decide` saw it
    after: models.Payment | None  # as written (`before` when nothing changed)


Decide = Callable[[models.Payment | None], Step]


@dataclasses.dataclass(frozen=True, slots=True)
class Note:
    """An audit event that changes no state, written together with a reschedule."""

    trigger: str
    source: str
    detail: Mapping[str, Any]


def transition_changes(
    payment: models.Payment, to: State, trigger: Trigger, changes: Mapping[str, Any] | None
) -> dict[str, Any]:
    """What a backend writes besides state and version, after checking the step against the table (so no
    caller can write a step the state machine does not have). Attempts restart; unscheduled states drop
    their schedule."""
    values = _checked(states.TABLE, payment, to, trigger, changes, CHANGEABLE)
    if to in UNSCHEDULED:
        values["next_attempt_at"] = None
    return values


def refund_changes(
    refund: models.Refund, to: RefundState, trigger: RefundTrigger, changes: Mapping[str, Any] | None
) -> dict[str, Any]:
    """`transition_changes` for a refund: the step checked against the refund table; attempts restart."""
    return _checked(refund_states.TABLE, refund, to, trigger, changes, REFUND_CHANGEABLE)


def _checked(table: Table[Any, Any], record: Any, to: enum.StrEnum, trigger: enum.StrEnum,
             changes: Mapping[str, Any] | None, changeable: frozenset[str]) -> dict[str, Any]:
    """The step checked against `table` and the columns against `changeable`; attempts restart."""
    if table.destination(record.state, trigger) is not to:
        raise errors.IllegalTransition(record.state.value, trigger.value)
    values = dict(changes or {})
    if not changeable.issuperset(values):
        raise ValueError(f"transition cannot change {sorted(set(values) - changeable)}")
    values.setdefault("attempts", 0)
    return values


class PaymentStore(abc.ABC):
    """Durable payments, their timelines and inbound notifications.

    Every state change is a compare-and-set on (state, version) that writes the timeline event in the
    same transaction; `StaleState` means another writer won and the caller should re-read.
    """

    @abc.abstractmethod
    async def create(self, payment: models.Payment, *, source: str, detail: Mapping[str, Any]) -> models.Payment:
        """Insert a new payment (state `created`) with its creation event.

        Raises `DuplicatePayment` when the order_id or out_trade_no is taken.
        """

    @abc.abstractmethod
    async def get(self, out_trade_no: str) -> models.Payment | None: ...

    @abc.abstractmethod
    async def get_by_order_id(self, order_id: str) -> models.Payment | None:
        """The live payment of this order_id: the one not released by a WeChat refusal (at most one)."""

    @abc.abstractmethod
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
        """Move `payment` from the state it was read in to `to`, if nobody changed it since.

        `changes` may set the columns in CHANGEABLE. `notification`, when given, is recorded in the same
        transaction (so an acknowledged notification and its effect are durable together). A transition
        ends any lease, unless `lease_token` is given: then the caller holds a new lease until
        `next_attempt_at` (how the process that took a notification keeps the first forward to itself).
        Raises `IllegalTransition` if the table has no such step, `StaleState` if the CAS lost.
        """

    async def decide(
        self,
        out_trade_no: str,
        decide: Decide,
        *,
        at: dt.datetime,
        notification: models.Notification | None = None,
    ) -> Decided:
        """Read the payment, call `decide(payment or None)` and write the step it returns, atomically.

        `notification`, when given, is recorded with the step (its outcome set to the step's). If a
        notification with its id is already recorded, nothing is decided or written: `Decided(None, ...)`.
        `decide` must be pure: it may run more than once, and on a thread of the store's. Exceptions it
        raises (e.g. `GuardRejected` from `states.plan`) reach the caller, with nothing written.

        This generic version reads, then writes with CAS, and decides again from a fresh read when the
        CAS loses. A store that can read inside its write transaction overrides it: one round trip, no
        lost races.
        """
        for _ in range(DECIDE_RETRIES):
            if notification is not None and await self.get_notification(notification.notification_id):
                return Decided(None, None, None)
            payment = await self.get(out_trade_no)
            step = decide(payment)
            row = dataclasses.replace(notification, outcome=step.outcome) if notification is not None else None
            if step.to is None or step.trigger is None or payment is None:
                if row is not None and not await self.record_notification(row):
                    return Decided(None, None, None)  # recorded meanwhile by a concurrent delivery
                return Decided(step, payment, payment)
            try:
                moved = await self.transition(
                    payment, step.to, step.trigger,
                    source=step.source, at=at, detail=step.detail, changes=step.changes, notification=row,
                    lease_token=step.lease_token)
            except errors.StaleState:
                continue  # someone moved it meanwhile: decide again from what they left
            return Decided(step, payment, moved)
        raise errors.StoreUnavailable(f"payment {out_trade_no} kept changing; try again")

    @abc.abstractmethod
    async def reschedule(
        self, payment: models.Payment, *, next_attempt_at: dt.datetime | None, attempts: int, at: dt.datetime,
        note: Note | None = None,
    ) -> models.Payment:
        """Set the next attempt of a payment without changing its state (CAS on version); ends its lease.
        `note`, when given, is an event (from = to = the state) written in the same transaction: a failed
        delivery's attempt number and the backend's answer, say."""

    @abc.abstractmethod
    async def claim(self, payment: models.Payment, *, now: dt.datetime, lease: float) -> models.Payment:
        """Lease this one payment for `lease` seconds, as `claim_due` leases the due ones, for work a person
        asked for (an operator's resend). `StaleState` if it changed since it was read or another worker's
        lease on it has not run out."""

    @abc.abstractmethod
    async def claim_due(self, now: dt.datetime, limit: int, lease: float) -> list[models.Payment]:
        """Lease up to `limit` payments whose next attempt is due, oldest first.

        A leased payment is not returned again until `lease` seconds pass, so a payment in flight is not
        worked twice; if its worker dies, it becomes due again when the lease expires.
        """

    @abc.abstractmethod
    async def list_payments(self, *, state: State | None = None, after: str | None = None,
                            limit: int = 100) -> list[models.Payment]:
        """Payments ordered by out_trade_no, those after `after` (a keyset cursor), optionally in one state."""

    @abc.abstractmethod
    async def list_stuck(self, *, created_before: dt.datetime, expired_before: dt.datetime,
                         after: tuple[dt.datetime, str] | None = None, limit: int = 100) -> list[models.Payment]:
        """Non-terminal payments past their first deadline, oldest first (keyset cursor on created_at,
        out_trade_no): `created` made before `created_before`, `prepaid` expired before `expired_before`,
        `notified` whose first forward already failed."""

    @abc.abstractmethod
    async def count_by_state(self) -> dict[State, int]: ...

    @abc.abstractmethod
    async def due_stats(self, now: dt.datetime) -> tuple[int, dt.datetime | None]:
        """How many payments are due now, and the oldest due time (for the sweeper's backlog metrics)."""

    @abc.abstractmethod
    async def record_event(self, payment: models.Payment, trigger: str, *, source: str, at: dt.datetime,
                           detail: Mapping[str, Any]) -> None:
        """An audit event that changes no state (an operator's recheck or resend), from = to = state."""

    @abc.abstractmethod
    async def events(self, out_trade_no: str) -> list[models.Event]:
        """The timeline of one payment, oldest first."""

    @abc.abstractmethod
    async def record_notification(self, notification: models.Notification) -> bool:
        """Keep an inbound notification; False when its notification_id was already recorded."""

    @abc.abstractmethod
    async def get_notification(self, notification_id: str) -> models.Notification | None: ...

    @abc.abstractmethod
    async def notifications(self, out_trade_no: str) -> list[models.Notification]:
        """Every notification recorded against this payment (duplicates, ignored and refund ones included),
        oldest first: what WeChat said about it, for the operator."""

    @abc.abstractmethod
    async def get_by_transaction_id(self, transaction_id: str) -> models.Payment | None:
        """The payment WeChat paid under this transaction id, if any."""

    # --- refunds ------------------------------------------------------------------------------
    # A refund row is its own outbox, as a payment is: `next_attempt_at` says when the sweeper next re-drives it
    # (re-submit, query, forward), and a claim leases it.

    @abc.abstractmethod
    async def create_refund(self, refund: models.Refund, *, refundable: int, source: str,
                            detail: Mapping[str, Any]) -> tuple[models.Refund, bool]:
        """Insert a new refund (state `created`) with its creation event, unless its out_refund_no exists:
        then `(that refund, False)`, nothing written. Atomically with the insert, the payment's refunds that
        still count (`refunds.COUNTED`) plus this one must stay within `refundable` fen, else
        `RefundExceedsPayment` (nothing written). `NotFound` if the payment does not exist."""

    @abc.abstractmethod
    async def get_refund(self, out_refund_no: str) -> models.Refund | None: ...

    @abc.abstractmethod
    async def refunds_of(self, out_trade_no: str) -> list[models.Refund]:
        """Every refund of one payment, oldest first."""

    @abc.abstractmethod
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
        """CAS on (state, version) with the refund's event row (and `notification`, if given) in one
        transaction; `changes` may set REFUND_CHANGEABLE. Ends any lease. `StaleState` if the CAS lost."""

    @abc.abstractmethod
    async def reschedule_refund(self, refund: models.Refund, *, next_attempt_at: dt.datetime | None, attempts: int,
                                at: dt.datetime, note: Note | None = None) -> models.Refund:
        """Set a refund's next attempt (CAS on version, with `note`'s event); ends its lease."""

    @abc.abstractmethod
    async def claim_due_refunds(self, now: dt.datetime, limit: int, lease: float) -> list[models.Refund]:
        """Lease up to `limit` refunds whose next attempt is due, oldest first (as `claim_due`)."""

    @abc.abstractmethod
    async def refund_events(self, out_refund_no: str) -> list[models.RefundEvent]:
        """The timeline of one refund, oldest first."""

    @abc.abstractmethod
    async def count_refunds_by_state(self) -> dict[RefundState, int]: ...

    @abc.abstractmethod
    async def refunds_succeeded_between(self, start: dt.datetime, end: dt.datetime) -> list[models.Refund]:
        """Refunds whose WeChat success time lies in [start, end), whatever their state now."""

    @abc.abstractmethod
    async def mark_refund_billed(self, out_refund_no: str, bill_date: dt.date) -> None:
        """Remember the first bill whose REFUND line matched this refund."""

    # --- reconciliation -----------------------------------------------------------------------

    @abc.abstractmethod
    async def start_reconciliation(self, bill_date: dt.date, at: dt.datetime) -> int | None:
        """Record a run as `running` and return its id, or None when another run of that date started
        less than RUN_STALE_AFTER ago and has not finished (another replica is on it)."""

    @abc.abstractmethod
    async def finish_reconciliation(self, run_id: int, *, status: str, counts: Mapping[str, int],
                                    at: dt.datetime, error: str | None = None) -> None: ...

    @abc.abstractmethod
    async def reconciliation_runs(self, bill_date: dt.date) -> list[models.ReconciliationRun]:
        """Runs for one bill date, oldest first."""

    @abc.abstractmethod
    async def add_discrepancy(self, discrepancy: models.Discrepancy) -> bool:
        """Record a finding; False when the same (date, out_trade_no, category) was already recorded."""

    @abc.abstractmethod
    async def discrepancies(self, bill_date: dt.date) -> list[models.Discrepancy]: ...

    @abc.abstractmethod
    async def mark_billed(self, bill_date: dt.date, out_trade_nos: Iterable[str]) -> None:
        """Remember that these payments appeared as SUCCESS in the bill of `bill_date`."""

    @abc.abstractmethod
    async def billed(self, out_trade_nos: Iterable[str]) -> set[str]:
        """Which of these appeared as SUCCESS in any bill reconciled so far."""

    @abc.abstractmethod
    async def paid_between(self, start: dt.datetime, end: dt.datetime) -> list[models.Payment]:
        """Payments whose WeChat success time lies in [start, end), whatever their state now."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise `StoreUnavailable` unless the store answers."""

    @abc.abstractmethod
    async def close(self) -> None: ...


async def open_store(url: str) -> PaymentStore:
    """Open (and migrate) the store named by `url`: `sqlite:///relative.db`, `sqlite:////abs/path.db`, or
    `postgresql://user@host:5432/db` (query parameters become server settings, e.g. `?search_path=x`)."""
    if url.startswith("sqlite:///"):
        from payflow.store import sqlite

        return await sqlite.SqliteStore.open(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        from payflow.store import postgres

        return await postgres.PostgresStore.open(url)
    raise errors.SettingsError(f"PAYFLOW_DATABASE_URL: unsupported store URL {logs.redact_url(url)!r}")
