"""The chaos invariants are only worth something if each one can fail: one broken ledger per invariant."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from simulator.chaos.checks import Ledgers, check

DAY = "2025-06-01"


def _healthy() -> Ledgers:
    return Ledgers(
        wechat={
            "P1": {"trade_state": "REFUND", "amount": 100, "paid_amount": 100, "refunded_amount": 50},
            "P2": {"trade_state": "CLOSED", "amount": 200, "paid_amount": None, "refunded_amount": 0},
            "P3": {"trade_state": "SUCCESS", "amount": 300, "paid_amount": 299, "refunded_amount": 0},
            "P4": {"trade_state": "REFUND", "amount": 400, "paid_amount": 400, "refunded_amount": 400},
            "P5": {"trade_state": "REFUND", "amount": 500, "paid_amount": 500, "refunded_amount": 500},
            "P6": {"trade_state": "REFUND", "amount": 600, "paid_amount": 600, "refunded_amount": 300},
            "P7": {"trade_state": "SUCCESS", "amount": 700, "paid_amount": 700, "refunded_amount": 0},
        },
        backend={
            "o1": {"status": "paid", "paid_amount": 100, "out_trade_no": "P1", "closed_events": [],
                   "refunds": {"o1-r1": 50}, "refunded_amount": 50},
            "o2": {"status": "pending", "paid_amount": None, "out_trade_no": "P2", "closed_events": ["e2"],
                   "refunds": {}, "refunded_amount": 0},
            "o4": {"status": "cancelled", "paid_amount": None, "out_trade_no": "P4", "closed_events": [],
                   "refunds": {"auto-P4": 400}, "refunded_amount": 400},
            "o5": {"status": "paid", "paid_amount": 500, "out_trade_no": "P5", "closed_events": [],
                   "refunds": {"o5-r1": 200, "o5-r2": 300}, "refunded_amount": 500},
            "o6": {"status": "paid", "paid_amount": 600, "out_trade_no": "P6", "closed_events": [],
                   "refunds": {}, "refunded_amount": 0},
            "o7": {"status": "paid", "paid_amount": 700, "out_trade_no": "P7", "closed_events": [],
                   "refunds": {}, "refunded_amount": 0},
        },
        payflow={
            "P1": {"order_id": "o1", "amount": 100, "state": "reconciled", "reason": None},
            "P2": {"order_id": "o2", "amount": 200, "state": "closed", "reason": None},
            "P3": {"order_id": "o3", "amount": 300, "state": "needs_review", "reason": "amount_mismatch"},
            # cancelled at the backend, refused, then refunded by payflow (PAYFLOW_AUTO_REFUND=backend_rejected)
            "P4": {"order_id": "o4", "amount": 400, "state": "refunded", "reason": "backend_rejected"},
            "P5": {"order_id": "o5", "amount": 500, "state": "refunded", "reason": None},  # two partials, in full
            "P6": {"order_id": "o6", "amount": 600, "state": "needs_review", "reason": "refund_seen"},  # outside
            "P7": {"order_id": "o7", "amount": 700, "state": "reconciled", "reason": None},
        },
        discrepancies=[{"category": "AMOUNT_MISMATCH", "out_trade_no": "P3"},
                       {"category": "REFUND_UNKNOWN", "out_trade_no": "P6"}],
        acknowledged={"o1": "P1", "o2": "P2", "o3": "P3", "o4": "P4", "o5": "P5", "o6": "P6", "o7": "P7"},
        fates={"o1": "pays", "o2": "never", "o3": "wrong_amount", "o4": "cancelled", "o5": "pays", "o6": "pays",
               "o7": "pays"},
        wechat_refunds={
            "o1-r1": {"out_trade_no": "P1", "amount": 50, "status": "SUCCESS", "day": DAY},
            "auto-P4": {"out_trade_no": "P4", "amount": 400, "status": "SUCCESS", "day": DAY},
            "o5-r1": {"out_trade_no": "P5", "amount": 200, "status": "SUCCESS", "day": DAY},
            "o5-r2": {"out_trade_no": "P5", "amount": 300, "status": "SUCCESS", "day": DAY},
            "platform-o6": {"out_trade_no": "P6", "amount": 300, "status": "SUCCESS", "day": DAY},
        },
        payflow_refunds={
            "o1-r1": {"out_trade_no": "P1", "amount": 50, "state": "synced", "origin": "api"},
            "auto-P4": {"out_trade_no": "P4", "amount": 400, "state": "synced", "origin": "auto"},
            "o5-r1": {"out_trade_no": "P5", "amount": 200, "state": "synced", "origin": "api"},
            "o5-r2": {"out_trade_no": "P5", "amount": 300, "state": "synced", "origin": "api"},
        },
        refunds_acknowledged={"o1-r1": "P1", "o5-r1": "P5", "o5-r2": "P5"},
        outside={"platform-o6": "P6"},
        reconciled_days=frozenset({DAY}),
    )


def _failing(ledgers: Ledgers) -> set[str]:
    return {i.name for i in check(ledgers) if not i.holds}


def _with(ledgers: Ledgers, field: str, key: str, **changes: Any) -> Ledgers:
    table = {k: dict(v) for k, v in getattr(ledgers, field).items()}
    table[key] = {**table.get(key, {}), **changes}
    return dataclasses.replace(ledgers, **{field: table})  # type: ignore[arg-type]


def _without(ledgers: Ledgers, field: str, key: str) -> Ledgers:
    kept = {k: v for k, v in getattr(ledgers, field).items() if k != key}
    return dataclasses.replace(ledgers, **{field: kept})  # type: ignore[arg-type]


def _not_auto_refunded(led: Ledgers) -> Ledgers:
    """The cancelled order was refused by the backend and parked, but payflow never refunded it."""
    led = _with(led, "payflow", "P4", state="needs_review")
    led = _with(led, "wechat", "P4", trade_state="SUCCESS", refunded_amount=0)
    led = _with(led, "backend", "o4", refunds={}, refunded_amount=0)
    return _without(_without(led, "wechat_refunds", "auto-P4"), "payflow_refunds", "auto-P4")


def _auto_refund_abnormal(led: Ledgers) -> Ledgers:
    """The cancelled order's automatic refund went ABNORMAL at WeChat: parked for a person, rightly."""
    led = _with(led, "payflow", "P4", state="needs_review")
    led = _with(led, "backend", "o4", refunds={}, refunded_amount=0)
    led = _with(led, "wechat_refunds", "auto-P4", status="ABNORMAL")
    return _with(led, "payflow_refunds", "auto-P4", state="abnormal")


def test_a_healthy_run_passes_everything() -> None:
    assert _failing(_healthy()) == set()
    assert [i.name for i in check(_healthy())] == ["I1", "I2", "I3", "I4", "I5", "I6", "R1", "R2", "R3", "R4"]


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda led: _with(led, "backend", "o1", status="pending", paid_amount=None), {"I1", "I4"}),
        (lambda led: _with(led, "backend", "o1", paid_amount=99), {"I1"}),
        (lambda led: _with(led, "backend", "o2", status="paid", paid_amount=200), {"I2", "I4"}),
        (lambda led: _with(led, "payflow", "P2", state="prepaid"), {"I3"}),
        (lambda led: _with(led, "payflow", "P3", reason="backend_rejected"), {"I3"}),
        (lambda led: _with(led, "payflow", "P1", state="closed"), {"I4"}),
        (lambda led: _without(led, "payflow", "P2"), {"I5"}),
        (lambda led: dataclasses.replace(led, discrepancies=[*led.discrepancies,
                                                             {"category": "PLATFORM_MISS", "out_trade_no": "X"}]),
         {"I6"}),
        (lambda led: dataclasses.replace(led, discrepancies=[*led.discrepancies,
                                                             {"category": "AMOUNT_MISMATCH", "out_trade_no": "P1"}]),
         {"I6"}),
        # the cancelled order must end refunded, not parked
        (_not_auto_refunded, {"I3"}),
        (_auto_refund_abnormal, set()),
        # the outside order may be parked for the refund payflow never asked for, and for nothing else
        (lambda led: _with(led, "payflow", "P6", reason="backend_rejected"), {"I3"}),
        (lambda led: _with(led, "payflow", "P7", state="needs_review", reason="refund_seen"), {"I3", "I4"}),
        # a payment refunded in full at WeChat is `refunded`, and only such a one
        (lambda led: _with(led, "payflow", "P5", state="reconciled"), {"I4"}),
        (lambda led: _with(led, "payflow", "P1", state="refunded"), {"I4"}),
        # a refund payflow answered for is in its store after the crashes
        (lambda led: _without(led, "payflow_refunds", "o1-r1"), {"I5", "R3"}),
        # R1: the backend hears of every refund WeChat made for payflow, with its amount, and of no other
        (lambda led: _with(led, "backend", "o1", refunds={}, refunded_amount=0), {"R1"}),
        (lambda led: _with(led, "backend", "o1", refunds={"o1-r1": 40}, refunded_amount=40), {"R1"}),
        (lambda led: _with(led, "backend", "o7", refunds={"ghost": 10}, refunded_amount=10), {"R1"}),
        (lambda led: _with(led, "backend", "o4", refunds={}, refunded_amount=0), {"R1", "I4"}),
        # R2: nothing refunded past what was paid, in any of the three ledgers
        (lambda led: _with(led, "wechat", "P1", refunded_amount=150), {"R2"}),
        (lambda led: _with(led, "backend", "o5", refunded_amount=600), {"R2", "I4"}),
        (lambda led: _with(led, "payflow_refunds", "o1-r1", amount=150), {"R2", "R3"}),
        # R3: no refund at WeChat that payflow did not ask for, but the injected one, which is reported
        (lambda led: _with(led, "wechat_refunds", "stray", out_trade_no="P7", amount=10, status="PROCESSING",
                           day=DAY), {"R3"}),
        (lambda led: _with(led, "wechat_refunds", "o1-r1", amount=60), {"R1", "R3"}),
        (lambda led: dataclasses.replace(led, discrepancies=led.discrepancies[:1]), {"R3"}),
        (lambda led: dataclasses.replace(led, discrepancies=led.discrepancies[:1], reconciled_days=frozenset()),
         set()),
        (lambda led: _without(led, "wechat_refunds", "platform-o6"), {"R3"}),
        (lambda led: dataclasses.replace(led, discrepancies=[*led.discrepancies,
                                                             {"category": "REFUND_UNKNOWN", "out_trade_no": "P1"}]),
         {"I6"}),
        # R4: one payment.closed for every order closed at WeChat (the same event again is fine), none for a paid one
        (lambda led: _with(led, "backend", "o2", closed_events=[]), {"R4"}),
        (lambda led: _with(led, "backend", "o2", closed_events=["e2", "e2-other"]), {"R4"}),
        (lambda led: _with(led, "backend", "o2", closed_events=["e2", "e2"]), set()),
        (lambda led: _with(led, "backend", "o7", closed_events=["e7"]), {"R4"}),
    ],
)
def test_each_invariant_catches_its_breakage(breakage: Any, expected: set[str]) -> None:
    assert _failing(breakage(_healthy())) == expected
