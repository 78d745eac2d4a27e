from __future__ import annotations

import itertools
from typing import Any

import pytest
from transitions import MachineError

from payflow import errors, states
from payflow.states import State, Trigger
from tests import factories

# DESIGN §2, written out independently of payflow.states.TABLE so a typo there fails here.
EXPECTED = {
    ("created", "prepay"): "prepaid",
    ("created", "pay"): "notified",
    ("prepaid", "pay"): "notified",
    ("notified", "sync"): "synced",
    ("synced", "reconcile"): "reconciled",
    ("created", "close"): "closed",
    ("prepaid", "close"): "closed",
    ("created", "flag"): "needs_review",
    ("prepaid", "flag"): "needs_review",
    ("notified", "flag"): "needs_review",
    ("synced", "flag"): "needs_review",
    ("closed", "flag"): "needs_review",
    ("needs_review", "requeue"): "notified",
    ("needs_review", "dismiss"): "closed",
    ("synced", "refund"): "refunded",
    ("reconciled", "refund"): "refunded",
    ("needs_review", "refund"): "refunded",
}

# A payload that satisfies every guard of a trigger.
VALID_PAYLOAD = {
    "prepay": {"prepay_id": "wx2611215250"},
    "pay": {"amount": 100, "transaction_id": "4200000001"},
    "sync": {},
    "reconcile": {"amount": 100},
    "close": {},
    "flag": {"reason": "amount_mismatch"},
    "requeue": {"note": "backend fixed"},
    "dismiss": {"note": "refunded by hand"},
    "refund": {"refunded": 100},
}

ALL_PAIRS = list(itertools.product([s.value for s in State], [t.value for t in Trigger]))


def test_eight_states_and_nine_triggers() -> None:
    assert {s.value for s in State} == {
        "created", "prepaid", "notified", "synced", "reconciled", "closed", "needs_review", "refunded"}
    assert {t.value for t in Trigger} == {
        "prepay", "pay", "sync", "reconcile", "close", "flag", "requeue", "dismiss", "refund"}
    assert len(ALL_PAIRS) == 72


@pytest.mark.parametrize(("state", "trigger"), ALL_PAIRS)
def test_every_state_trigger_pair(state: str, trigger: str) -> None:
    payment = factories.payment(state=State(state), amount=100)
    expected = EXPECTED.get((state, trigger))
    if expected is None:
        with pytest.raises(errors.IllegalTransition):
            states.plan(payment, trigger, **VALID_PAYLOAD[trigger])
        assert states.destination(State(state), Trigger(trigger)) is None
    else:
        assert states.plan(payment, trigger, **VALID_PAYLOAD[trigger]) is State(expected)
        assert states.destination(State(state), Trigger(trigger)) is State(expected)
    assert payment.state is State(state)  # plan is pure


class _Probe:
    """A model for the `transitions` Machine built from the table: what its conditions read and set."""

    def __init__(self, record: Any, payload: dict[str, Any]) -> None:
        self.state = record.state.value
        self.record = record
        self.payload = payload
        self.rejection: str | None = None


MACHINE = states.TABLE.machine()


@pytest.mark.parametrize("guards", ["pass", "fail"])
@pytest.mark.parametrize(("state", "trigger"), ALL_PAIRS)
def test_the_transitions_machine_built_from_the_table_agrees_with_plan(state: str, trigger: str, guards: str) -> None:
    payment = factories.payment(state=State(state), amount=100)
    payload = VALID_PAYLOAD[trigger] if guards == "pass" else {}
    probe = _Probe(payment, payload)
    try:
        moved = MACHINE.events[trigger].trigger(probe)
    except MachineError:
        with pytest.raises(errors.IllegalTransition):
            states.plan(payment, trigger, **payload)
        return
    if moved:
        assert states.plan(payment, trigger, **payload) is State(probe.state)
    else:
        with pytest.raises(errors.GuardRejected) as refused:
            states.plan(payment, trigger, **payload)
        assert refused.value.reason == probe.rejection and probe.state == state


def test_a_table_with_a_step_twice_is_refused() -> None:
    rows = (*states.ROWS, (Trigger.CLOSE, (State.PREPAID,), State.NEEDS_REVIEW))
    with pytest.raises(ValueError, match="close from prepaid appears twice"):
        states.Table(State, Trigger, rows, states.GUARDS)


def test_sources_are_read_from_the_table() -> None:
    assert states.TABLE.sources(Trigger.FLAG) == {
        State.CREATED, State.PREPAID, State.NOTIFIED, State.SYNCED, State.CLOSED}
    assert states.TABLE.sources(Trigger.REQUEUE) == {State.NEEDS_REVIEW}


@pytest.mark.parametrize("state", [State.RECONCILED, State.REFUNDED])
def test_reconciled_is_terminal_but_for_a_whole_refund_and_refunded_is_terminal(state: State) -> None:
    payment = factories.payment(state=state)
    for trigger in Trigger:
        if state is State.RECONCILED and trigger is Trigger.REFUND:
            assert states.plan(payment, trigger, refunded=100) is State.REFUNDED
            continue
        with pytest.raises(errors.IllegalTransition):
            states.plan(payment, trigger, **VALID_PAYLOAD[trigger.value])


@pytest.mark.parametrize(
    ("state", "trigger", "payload", "reason"),
    [
        ("prepaid", "pay", {"amount": 99, "transaction_id": "42"}, "differs"),
        ("prepaid", "pay", {"amount": 101, "transaction_id": "42"}, "differs"),
        ("created", "pay", {"amount": "100", "transaction_id": "42"}, "integer"),
        ("prepaid", "pay", {"amount": True, "transaction_id": "42"}, "integer"),
        ("prepaid", "pay", {"amount": 100}, "transaction_id"),
        ("created", "prepay", {}, "prepay_id"),
        ("created", "prepay", {"prepay_id": "  "}, "prepay_id"),
        ("synced", "reconcile", {"amount": 50}, "differs"),
        ("notified", "flag", {}, "reason"),
        ("needs_review", "requeue", {"note": ""}, "note"),
        ("needs_review", "dismiss", {}, "note"),
        ("synced", "refund", {"refunded": 99}, "partial"),
        ("synced", "refund", {}, "integer"),
        ("needs_review", "refund", {"refunded": "100"}, "integer"),
    ],
)
def test_guards_reject(state: str, trigger: str, payload: dict[str, object], reason: str) -> None:
    payment = factories.payment(state=State(state), amount=100)
    with pytest.raises(errors.GuardRejected) as info:
        states.plan(payment, trigger, **payload)
    assert reason in info.value.reason
    assert info.value.state == state and info.value.trigger == trigger


def test_plan_accepts_database_strings_and_rejects_unknown_triggers() -> None:
    payment = factories.payment(state=State.PREPAID)
    assert states.plan(payment, "close") is State.CLOSED
    with pytest.raises(ValueError):
        states.plan(payment, "chargeback")


def test_paid_states() -> None:
    assert states.PAID_STATES == {State.NOTIFIED, State.SYNCED, State.RECONCILED, State.REFUNDED}
    assert factories.payment(state=State.SYNCED).paid
    assert not factories.payment(state=State.NEEDS_REVIEW).paid
