"""The refund state table, written out independently of payflow.states.refunds so a typo there fails here."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from transitions import MachineError

from payflow import errors
from payflow.states import refunds
from payflow.states.refunds import RefundState, RefundTrigger
from tests import factories
from tests.unit.test_states import _Probe

EXPECTED = {
    ("created", "accept"): "processing",
    ("created", "succeed"): "succeeded",
    ("processing", "succeed"): "succeeded",
    ("abnormal", "succeed"): "succeeded",
    ("succeeded", "sync"): "synced",
    ("created", "abnormal"): "abnormal",
    ("processing", "abnormal"): "abnormal",
    ("created", "close"): "closed",
    ("processing", "close"): "closed",
    ("abnormal", "close"): "closed",
    ("created", "fail"): "failed",
}
VALID_PAYLOAD: dict[str, dict[str, Any]] = {
    "accept": {"refund_id": "5030"}, "succeed": {"amount": 40, "refund_id": "5030"}, "sync": {}, "abnormal": {},
    "close": {}, "fail": {"code": "INVALID_REQUEST"},
}
ALL_PAIRS = list(itertools.product([s.value for s in RefundState], [t.value for t in RefundTrigger]))


def _refund(state: str) -> Any:
    return factories.refund(factories.payment(), amount=40, state=RefundState(state))


@pytest.mark.parametrize(("state", "trigger"), ALL_PAIRS)
def test_every_state_trigger_pair(state: str, trigger: str) -> None:
    refund = _refund(state)
    expected = EXPECTED.get((state, trigger))
    if expected is None:
        with pytest.raises(errors.IllegalTransition):
            refunds.TABLE.plan(refund, trigger, **VALID_PAYLOAD[trigger])
    else:
        assert refunds.TABLE.plan(refund, trigger, **VALID_PAYLOAD[trigger]) is RefundState(expected)


MACHINE = refunds.TABLE.machine()


@pytest.mark.parametrize("guards", ["pass", "fail"])
@pytest.mark.parametrize(("state", "trigger"), ALL_PAIRS)
def test_the_transitions_machine_agrees_with_plan(state: str, trigger: str, guards: str) -> None:
    refund = _refund(state)
    payload = VALID_PAYLOAD[trigger] if guards == "pass" else {}
    probe = _Probe(refund, payload)
    try:
        moved = MACHINE.events[trigger].trigger(probe)
    except MachineError:
        with pytest.raises(errors.IllegalTransition):
            refunds.TABLE.plan(refund, trigger, **payload)
        return
    if moved:
        assert refunds.TABLE.plan(refund, trigger, **payload) is RefundState(probe.state)
    else:
        with pytest.raises(errors.GuardRejected) as refused:
            refunds.TABLE.plan(refund, trigger, **payload)
        assert refused.value.reason == probe.rejection and probe.state == state


@pytest.mark.parametrize(("payload", "reason"), [
    ({"amount": 41, "refund_id": "5030"}, "refunded 41"),
    ({"amount": "40", "refund_id": "5030"}, "integer"),
    ({"amount": 40}, "refund_id"),
])
def test_success_must_be_news_about_this_refund(payload: dict[str, Any], reason: str) -> None:
    with pytest.raises(errors.GuardRejected) as refused:
        refunds.TABLE.plan(_refund("processing"), "succeed", **payload)
    assert reason in refused.value.reason


def test_the_counted_sets_partition_the_states() -> None:
    assert refunds.COUNTED | refunds.UNREFUNDED == set(RefundState)
    assert not refunds.COUNTED & refunds.UNREFUNDED
    assert refunds.REFUNDED <= refunds.COUNTED
