"""The payment state machine: states, triggers, the transition table and its guards (DESIGN §2).

`TABLE` is the one authority: `plan()`, the stores' `destination()` check and the `transitions` Machine
(`TABLE.machine()`) all read it; see `payflow.states.table`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Protocol

from payflow.states.table import Guard, Table, requires


class State(enum.StrEnum):
    CREATED = "created"
    PREPAID = "prepaid"
    NOTIFIED = "notified"
    SYNCED = "synced"
    RECONCILED = "reconciled"
    CLOSED = "closed"
    NEEDS_REVIEW = "needs_review"
    REFUNDED = "refunded"  # refunds reached the whole paid amount (terminal)


class Trigger(enum.StrEnum):
    PREPAY = "prepay"
    PAY = "pay"
    SYNC = "sync"
    RECONCILE = "reconcile"
    CLOSE = "close"
    FLAG = "flag"
    REQUEUE = "requeue"
    DISMISS = "dismiss"
    REFUND = "refund"


class Source(enum.StrEnum):
    """Who caused a transition; kept on every event."""

    API = "api"
    NOTIFY = "notify"
    QUERY = "query"
    BILL = "bill"
    ADMIN = "admin"
    SWEEPER = "sweeper"
    BACKEND = "backend"


# WeChat has confirmed the money arrived (the payer-facing "paid"); a refunded payment was paid, too.
PAID_STATES = frozenset({State.NOTIFIED, State.SYNCED, State.RECONCILED, State.REFUNDED})

S, T = State, Trigger
# (trigger, sources, destination) — the one transition table of DESIGN §2.
ROWS: tuple[tuple[Trigger, tuple[State, ...], State], ...] = (
    (T.PREPAY, (S.CREATED,), S.PREPAID),
    (T.PAY, (S.CREATED, S.PREPAID), S.NOTIFIED),
    (T.SYNC, (S.NOTIFIED,), S.SYNCED),
    (T.RECONCILE, (S.SYNCED,), S.RECONCILED),
    (T.CLOSE, (S.CREATED, S.PREPAID), S.CLOSED),
    (T.FLAG, (S.CREATED, S.PREPAID, S.NOTIFIED, S.SYNCED, S.CLOSED), S.NEEDS_REVIEW),
    (T.REQUEUE, (S.NEEDS_REVIEW,), S.NOTIFIED),
    (T.DISMISS, (S.NEEDS_REVIEW,), S.CLOSED),
    (T.REFUND, (S.SYNCED, S.RECONCILED, S.NEEDS_REVIEW), S.REFUNDED),
)
del S, T


class PaymentLike(Protocol):
    """What a guard may look at; `models.Payment` satisfies it."""

    @property
    def state(self) -> State: ...

    @property
    def amount(self) -> int: ...


def _amount_matches(payment: PaymentLike, payload: Mapping[str, Any]) -> str | None:
    paid = payload.get("amount")
    if isinstance(paid, bool) or not isinstance(paid, int):
        return "pay needs the paid amount (integer fen)"
    if paid != payment.amount:
        return f"paid amount {paid} differs from the payment amount {payment.amount}"
    return None



def _placed(payment: PaymentLike, payload: Mapping[str, Any]) -> str | None:
    """WeChat's answer to the placement: a prepay_id (JSAPI, mini program, App) or a URL (Native, H5)."""
    if requires("prepay_id")(payment, payload) is None or requires("pay_url")(payment, payload) is None:
        return None
    return "prepay_id or pay_url is required"


def _refunded_in_full(payment: PaymentLike, payload: Mapping[str, Any]) -> str | None:
    """`refund` needs refunds that reached the paid amount (`refunded`, integer fen); a partial one leaves the
    payment where it is."""
    refunded = payload.get("refunded")
    if isinstance(refunded, bool) or not isinstance(refunded, int):
        return "refund needs the refunded amount (integer fen)"
    paid = getattr(payment, "paid_amount", None) or payment.amount
    if refunded < paid:
        return f"refunded {refunded} of {paid}: a partial refund leaves the payment's state"
    return None


# Guards are pure functions of (payment, payload) that return a reason to refuse, or None.
GUARDS: Mapping[Trigger, tuple[Guard, ...]] = {
    Trigger.PREPAY: (_placed,),
    Trigger.PAY: (_amount_matches, requires("transaction_id")),
    Trigger.RECONCILE: (_amount_matches,),
    Trigger.FLAG: (requires("reason"),),
    Trigger.REQUEUE: (requires("note"),),
    Trigger.DISMISS: (requires("note"),),
    Trigger.REFUND: (_refunded_in_full,),
}

TABLE: Table[State, Trigger] = Table(State, Trigger, ROWS, GUARDS)


def plan(payment: PaymentLike, trigger: Trigger | str, **payload: Any) -> State:
    """Where `trigger` takes `payment`, or raise IllegalTransition / GuardRejected. Pure."""
    return TABLE.plan(payment, trigger, **payload)


def destination(state: State | str, trigger: Trigger | str) -> State | None:
    """The table's destination for (state, trigger), or None; no guards. Stores use it as a check."""
    return TABLE.destination(state, trigger)
