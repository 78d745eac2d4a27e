"""The chaos invariants are only worth something if each one can fail: one broken ledger per invariant."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from simulator.chaos.checks import Ledgers, check


def _healthy() -> Ledgers:
    return Ledgers(
        wechat={
            "P1": {"trade_state": "SUCCESS", "amount": 100, "paid_amount": 100},
            "P2": {"trade_state": "CLOSED", "amount": 200, "paid_amount": None},
            "P3": {"trade_state": "SUCCESS", "amount": 300, "paid_amount": 299},
            "P4": {"trade_state": "SUCCESS", "amount": 400, "paid_amount": 400},
        },
        backend={
            "o1": {"status": "paid", "paid_amount": 100, "out_trade_no": "P1"},
            "o2": {"status": "pending", "paid_amount": None, "out_trade_no": None},
            "o4": {"status": "cancelled", "paid_amount": None, "out_trade_no": None},
        },
        payflow={
            "P1": {"order_id": "o1", "amount": 100, "state": "reconciled", "reason": None},
            "P2": {"order_id": "o2", "amount": 200, "state": "closed", "reason": None},
            "P3": {"order_id": "o3", "amount": 300, "state": "needs_review", "reason": "amount_mismatch"},
            "P4": {"order_id": "o4", "amount": 400, "state": "needs_review", "reason": "backend_rejected"},
        },
        discrepancies=[{"category": "AMOUNT_MISMATCH", "out_trade_no": "P3"}],
        acknowledged={"o1": "P1", "o2": "P2", "o3": "P3", "o4": "P4"},
        fates={"o1": "pays", "o2": "never", "o3": "wrong_amount", "o4": "cancelled"},
    )


def _failing(ledgers: Ledgers) -> set[str]:
    return {i.name for i in check(ledgers) if not i.holds}


def _with(ledgers: Ledgers, field: str, key: str, **changes: Any) -> Ledgers:
    table = {k: dict(v) for k, v in getattr(ledgers, field).items()}
    table[key] = {**table.get(key, {}), **changes}
    return dataclasses.replace(ledgers, **{field: table})


def test_a_healthy_run_passes_everything() -> None:
    assert _failing(_healthy()) == set()


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda led: _with(led, "backend", "o1", status="pending", paid_amount=None), {"I1", "I4"}),
        (lambda led: _with(led, "backend", "o1", paid_amount=99), {"I1"}),
        (lambda led: _with(led, "backend", "o2", status="paid", paid_amount=200, out_trade_no="P2"), {"I2", "I4"}),
        (lambda led: _with(led, "payflow", "P2", state="prepaid"), {"I3"}),
        (lambda led: _with(led, "payflow", "P3", reason="backend_rejected"), {"I3"}),
        (lambda led: _with(led, "payflow", "P1", state="closed"), {"I4"}),
        (lambda led: dataclasses.replace(led, payflow={k: v for k, v in led.payflow.items() if k != "P2"}), {"I5"}),
        (lambda led: dataclasses.replace(led, discrepancies=[{"category": "PLATFORM_MISS", "out_trade_no": "X"}]),
         {"I6"}),
        (lambda led: dataclasses.replace(led, discrepancies=[{"category": "AMOUNT_MISMATCH", "out_trade_no": "P1"}]),
         {"I6"}),
    ],
)
def test_each_invariant_catches_its_breakage(breakage: Any, expected: set[str]) -> None:
    assert _failing(breakage(_healthy())) == expected
