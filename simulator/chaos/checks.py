"""The invariants, computed from the three parties' own ledgers (WeChat, backend, payflow's store).

Pure functions over plain records, so they can be tested (and trusted) on their own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

TERMINAL = {"reconciled", "closed"}
# needs_review is an expected end for exactly these scenarios.
EXPECTED_REVIEW = {"wrong_amount": "amount_mismatch", "cancelled": "backend_rejected"}
EXPLAINED_DISCREPANCY = {"AMOUNT_MISMATCH": "wrong_amount"}


@dataclasses.dataclass(frozen=True)
class Invariant:
    name: str
    description: str
    failures: tuple[str, ...]

    @property
    def holds(self) -> bool:
        return not self.failures


@dataclasses.dataclass(frozen=True)
class Ledgers:
    wechat: Mapping[str, Mapping[str, Any]]  # out_trade_no → {trade_state, amount, paid_amount}
    backend: Mapping[str, Mapping[str, Any]]  # order_id → {status, paid_amount, out_trade_no, ...}
    payflow: Mapping[str, Mapping[str, Any]]  # out_trade_no → {order_id, amount, state, reason}
    discrepancies: Sequence[Mapping[str, Any]]  # {category, out_trade_no}
    acknowledged: Mapping[str, str]  # order_id → out_trade_no, every creation payflow acknowledged
    fates: Mapping[str, str]  # order_id → the scenario's fate


def _paid_right(order: Mapping[str, Any] | None) -> bool:
    return bool(order) and order["trade_state"] == "SUCCESS" and order["paid_amount"] == order["amount"]  # type: ignore[index]


def check(ledgers: Ledgers) -> list[Invariant]:
    w, b, p = ledgers.wechat, ledgers.backend, ledgers.payflow
    order_of = {no: row["order_id"] for no, row in p.items()}
    trade_of = {order: no for no, order in order_of.items()}

    i1 = []
    for no, order in w.items():
        if not _paid_right(order):
            continue
        order_id = order_of.get(no)
        if order_id is None:
            i1.append(f"{no}: paid at WeChat, unknown to payflow")
        elif ledgers.fates.get(order_id) == "cancelled":
            continue  # the business refused it; I3 expects needs_review
        elif (b.get(order_id) or {}).get("status") != "paid":
            i1.append(f"{order_id} ({no}): paid at WeChat, not paid at the backend")
        elif b[order_id].get("paid_amount") != order["amount"]:
            i1.append(f"{order_id} ({no}): backend paid {b[order_id].get('paid_amount')}, WeChat {order['amount']}")

    i2 = []
    for order_id, row in b.items():
        if row.get("status") != "paid":
            continue
        no = row.get("out_trade_no") or trade_of.get(order_id)
        if not _paid_right(w.get(no or "")):
            i2.append(f"{order_id} ({no}): paid at the backend, not paid (right) at WeChat")

    i3 = []
    for no, row in p.items():
        state, fate = row["state"], ledgers.fates.get(row["order_id"])
        if state in TERMINAL:
            continue
        if state == "needs_review" and fate in EXPECTED_REVIEW and row.get("reason") == EXPECTED_REVIEW[fate]:
            continue
        i3.append(f"{row['order_id']} ({no}): {state} (reason {row.get('reason')}, scenario {fate})")

    i4 = []
    for no, row in p.items():
        wechat, backend = w.get(no), b.get(row["order_id"]) or {}
        state, paid_back = row["state"], backend.get("status") == "paid"
        if state in ("reconciled", "synced") and not (_paid_right(wechat) and paid_back):
            i4.append(f"{row['order_id']} ({no}): payflow {state}, WeChat {_ws(wechat)}, "
                      f"backend {backend.get('status')}")
        elif state == "closed" and ((wechat or {}).get("trade_state") == "SUCCESS" or paid_back):
            i4.append(f"{row['order_id']} ({no}): payflow closed, WeChat {_ws(wechat)}, "
                      f"backend {backend.get('status')}")
        elif state == "needs_review" and paid_back:
            i4.append(f"{row['order_id']} ({no}): payflow needs_review but the backend marked it paid")

    i5 = [f"{order_id} ({no}): acknowledged, missing from payflow's store"
          for order_id, no in ledgers.acknowledged.items() if p.get(no, {}).get("order_id") != order_id]
    i5 += [f"{no}: placed at WeChat, missing from payflow's store" for no in w if no not in p]

    i6 = []
    for d in ledgers.discrepancies:
        fate = ledgers.fates.get(order_of.get(d["out_trade_no"], ""))
        if d["category"] not in EXPLAINED_DISCREPANCY or EXPLAINED_DISCREPANCY[d["category"]] != fate:
            i6.append(f"{d['out_trade_no']}: {d['category']} (scenario {fate})")

    return [
        Invariant("I1", "every order paid at WeChat with the right amount is paid at the backend", tuple(i1)),
        Invariant("I2", "nothing unpaid at WeChat is paid at the backend", tuple(i2)),
        Invariant("I3", "every payment is terminal, or in needs_review for an expected reason", tuple(i3)),
        Invariant("I4", "payflow's state agrees with both ledgers", tuple(i4)),
        Invariant("I5", "nothing created before a crash is missing after it", tuple(i5)),
        Invariant("I6", "every reconciliation discrepancy is explained", tuple(i6)),
    ]


def _ws(order: Mapping[str, Any] | None) -> str:
    if not order:
        return "unknown"
    return f"{order['trade_state']} {order.get('paid_amount')}/{order['amount']}"
