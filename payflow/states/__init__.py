"""The payment state machine: states, triggers, the transition table and the pure `plan()`.

The table is data, built once at import into one `transitions.Machine(model=None)`; `plan()` runs an
event on a throwaway probe so guards and the table are checked in exactly one place.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from transitions import Machine
from transitions.core import EventData

from payflow import errors


class State(enum.StrEnum):
    CREATED = "created"
    PREPAID = "prepaid"
    NOTIFIED = "notified"
    SYNCED = "synced"
    RECONCILED = "reconciled"
    CLOSED = "closed"
    NEEDS_REVIEW = "needs_review"


class Trigger(enum.StrEnum):
    PREPAY = "prepay"
    PAY = "pay"
    SYNC = "sync"
    RECONCILE = "reconcile"
    CLOSE = "close"
    FLAG = "flag"
    REQUEUE = "requeue"
    DISMISS = "dismiss"


class Source(enum.StrEnum):
    """Who caused a transition; kept on every event."""

    API = "api"
    NOTIFY = "notify"
    QUERY = "query"
    BILL = "bill"
    ADMIN = "admin"
    SWEEPER = "sweeper"
    BACKEND = "backend"


# WeChat has confirmed the money arrived (the payer-facing "paid").
PAID_STATES = frozenset({State.NOTIFIED, State.SYNCED, State.RECONCILED})
# Nothing is scheduled for these; only an operator or a contradicting WeChat fact moves them.
TERMINAL_STATES = frozenset({State.RECONCILED, State.CLOSED})

S, T = State, Trigger
# (trigger, sources, destination) — the one transition table of DESIGN §2.
TABLE: tuple[tuple[Trigger, tuple[State, ...], State], ...] = (
    (T.PREPAY, (S.CREATED,), S.PREPAID),
    (T.PAY, (S.CREATED, S.PREPAID), S.NOTIFIED),
    (T.SYNC, (S.NOTIFIED,), S.SYNCED),
    (T.RECONCILE, (S.SYNCED,), S.RECONCILED),
    (T.CLOSE, (S.CREATED, S.PREPAID), S.CLOSED),
    (T.FLAG, (S.CREATED, S.PREPAID, S.NOTIFIED, S.SYNCED, S.CLOSED), S.NEEDS_REVIEW),
    (T.REQUEUE, (S.NEEDS_REVIEW,), S.NOTIFIED),
    (T.DISMISS, (S.NEEDS_REVIEW,), S.CLOSED),
)
del S, T


class PaymentLike(Protocol):
    """What a guard may look at; `models.Payment` satisfies it."""

    @property
    def state(self) -> State: ...

    @property
    def amount(self) -> int: ...


Guard = Callable[[PaymentLike, Mapping[str, Any]], "str | None"]


def _amount_matches(payment: PaymentLike, payload: Mapping[str, Any]) -> str | None:
    paid = payload.get("amount")
    if isinstance(paid, bool) or not isinstance(paid, int):
        return "pay needs the paid amount (integer fen)"
    if paid != payment.amount:
        return f"paid amount {paid} differs from the payment amount {payment.amount}"
    return None


def _requires(name: str) -> Guard:
    def guard(payment: PaymentLike, payload: Mapping[str, Any]) -> str | None:
        value = payload.get(name)
        if not isinstance(value, str) or not value.strip():
            return f"{name} is required"
        return None

    guard.__name__ = f"requires_{name}"
    return guard


# Guards are pure functions of (payment, payload) that return a reason to refuse, or None.
GUARDS: Mapping[Trigger, tuple[Guard, ...]] = {
    Trigger.PREPAY: (_requires("prepay_id"),),
    Trigger.PAY: (_amount_matches, _requires("transaction_id")),
    Trigger.RECONCILE: (_amount_matches,),
    Trigger.FLAG: (_requires("reason"),),
    Trigger.REQUEUE: (_requires("note"),),
    Trigger.DISMISS: (_requires("note"),),
}


class _Probe:
    """A throwaway model for one `plan()` call; never stored, never shared."""

    __slots__ = ("state", "payment", "payload", "rejection")

    def __init__(self, payment: PaymentLike, payload: Mapping[str, Any]) -> None:
        self.state = State(payment.state).value
        self.payment = payment
        self.payload = payload
        self.rejection: str | None = None


def _condition(trigger: Trigger) -> Callable[[EventData], bool]:
    guards = GUARDS.get(trigger, ())

    def check(event: EventData) -> bool:
        probe: _Probe = event.model
        for guard in guards:
            reason = guard(probe.payment, probe.payload)
            if reason is not None:
                probe.rejection = reason
                return False
        return True

    return check


_MACHINE = Machine(
    model=None,
    states=[s.value for s in State],
    transitions=[
        {
            "trigger": trigger.value,
            "source": [s.value for s in sources],
            "dest": dest.value,
            "conditions": [_condition(trigger)],
        }
        for trigger, sources, dest in TABLE
    ],
    initial=None,
    auto_transitions=False,
    send_event=True,
)

_DESTINATIONS: Mapping[tuple[State, Trigger], State] = {
    (source, trigger): dest for trigger, sources, dest in TABLE for source in sources
}


def destination(state: State, trigger: Trigger) -> State | None:
    """The table's destination for (state, trigger), or None; no guards. Stores use it as a check."""
    return _DESTINATIONS.get((_state(state), _trigger(trigger)))


def plan(payment: PaymentLike, trigger: Trigger | str, **payload: Any) -> State:
    """Return where `trigger` takes `payment`, or raise IllegalTransition / GuardRejected.

    Pure: the payment is not modified; the event runs on a throwaway probe.

    The machine's answer depends only on (state, trigger) and on whether each guard passes, and guards
    are pure: so once the machine has answered for a (state, trigger) whose guards all pass, that answer
    is remembered (running an event through `transitions` costs more than the rest of a notification's
    decision). A refusal always goes to the machine, which says why.
    """
    trigger = _trigger(trigger)
    state = _state(payment.state)
    if (state, trigger) not in _DESTINATIONS:
        raise errors.IllegalTransition(state.value, trigger.value)
    passes = True
    for guard in GUARDS.get(trigger, ()):
        if guard(payment, payload) is not None:
            passes = False
            break
    if passes and (known := _PLANNED.get((state, trigger))) is not None:
        return known
    probe = _Probe(payment, payload)
    if not _MACHINE.events[trigger.value].trigger(probe):
        raise errors.GuardRejected(state.value, trigger.value, probe.rejection or "guard refused")
    planned = State(probe.state)
    if passes:
        _PLANNED[(state, trigger)] = planned
    return planned


def _state(value: State | str) -> State:
    # Already a State on every hot path; calling State(...) on one still costs an enum lookup.
    return value if value.__class__ is State else State(value)


def _trigger(value: Trigger | str) -> Trigger:
    return value if value.__class__ is Trigger else Trigger(value)


# (state, trigger) → where the machine took a payment whose guards all passed; filled by plan().
_PLANNED: dict[tuple[State, Trigger], State] = {}
