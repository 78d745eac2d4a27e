"""The invariants, computed from the three parties' own ledgers (WeChat, backend, payflow's store).

Pure functions over plain records, so they can be tested (and trusted) on their own. I1–I6 are about payments;
R1–R4 about refunds and closed payments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

TERMINAL = {"reconciled", "closed", "refunded"}
# needs_review is an expected end for exactly these scenarios.
EXPECTED_REVIEW = {"wrong_amount": "amount_mismatch"}
# Refused by the backend (cancelled there before the payer paid), then refunded by payflow itself
# (PAYFLOW_AUTO_REFUND=backend_rejected): such a paid order ends `refunded`, not in review.
AUTO_REFUNDED = {"cancelled": "backend_rejected"}
# The order refunded outside payflow is parked by reconciliation when its REFUND line names a refund payflow
# never asked for.
OUTSIDE_REVIEW = "refund_seen"
EXPLAINED_DISCREPANCY = {"AMOUNT_MISMATCH": "wrong_amount"}
# WeChat's trade states of an order the payer paid (REFUND: a refund was accepted since).
PAID_TRADE_STATES = ("SUCCESS", "REFUND")


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
    wechat: Mapping[str, Mapping[str, Any]]  # out_trade_no → {trade_state, amount, paid_amount, refunded_amount}
    # order_id → {status, paid_amount, out_trade_no, closed_events, refunds: {out_refund_no: amount}, ...}
    backend: Mapping[str, Mapping[str, Any]]
    payflow: Mapping[str, Mapping[str, Any]]  # out_trade_no → {order_id, amount, state, reason}
    discrepancies: Sequence[Mapping[str, Any]]  # {category, out_trade_no}
    acknowledged: Mapping[str, str]  # order_id → out_trade_no, every creation payflow acknowledged
    fates: Mapping[str, str]  # order_id → the scenario's fate
    # out_refund_no → {out_trade_no, amount, status (SUCCESS, PROCESSING, ABNORMAL, CLOSED), day}: WeChat's refunds
    wechat_refunds: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    # out_refund_no → {out_trade_no, amount, state, origin}: the refunds in payflow's store
    payflow_refunds: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    # out_refund_no → out_trade_no: every refund request payflow answered for (200, 201, or 503 "stored")
    refunds_acknowledged: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # out_refund_no → out_trade_no: the refund the scenario makes outside payflow (at most one)
    outside: Mapping[str, str] = dataclasses.field(default_factory=dict)
    reconciled_days: frozenset[str] = frozenset()  # bill dates (ISO) a reconciliation run finished


def _paid_right(order: Mapping[str, Any] | None) -> bool:
    return bool(order) and order["trade_state"] in PAID_TRADE_STATES and order["paid_amount"] == order["amount"]  # type: ignore[index]


def check(ledgers: Ledgers) -> list[Invariant]:
    return payment_invariants(ledgers) + refund_invariants(ledgers)


def payment_invariants(ledgers: Ledgers) -> list[Invariant]:
    w, b, p = ledgers.wechat, ledgers.backend, ledgers.payflow
    order_of = {no: row["order_id"] for no, row in p.items()}
    trade_of = {order: no for no, order in order_of.items()}
    outside_orders = set(ledgers.outside.values())
    refunded = _refunded_by_payflow(ledgers)
    abnormal = {r["out_trade_no"] for r in ledgers.wechat_refunds.values() if r.get("status") == "ABNORMAL"}

    i1 = []
    for no, order in w.items():
        if not _paid_right(order):
            continue
        order_id = order_of.get(no)
        if order_id is None:
            i1.append(f"{no}: paid at WeChat, unknown to payflow")
        elif ledgers.fates.get(order_id) == "cancelled":
            continue  # the business refused it; I3 expects it refunded
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
        state, fate, reason = row["state"], ledgers.fates.get(row["order_id"]), row.get("reason")
        if state in TERMINAL:
            continue
        if state == "needs_review":
            if fate in EXPECTED_REVIEW and reason == EXPECTED_REVIEW[fate]:
                continue
            if no in outside_orders and reason == OUTSIDE_REVIEW:
                continue
            if fate in AUTO_REFUNDED and reason == AUTO_REFUNDED[fate] and no in abnormal:
                continue  # its automatic refund went ABNORMAL at WeChat: parked for a person
        i3.append(f"{row['order_id']} ({no}): {state} (reason {reason}, scenario {fate})")

    i4 = []
    for no, row in p.items():
        wechat, backend = w.get(no), b.get(row["order_id"]) or {}
        state, paid_back = row["state"], backend.get("status") == "paid"
        paid = (wechat or {}).get("paid_amount")
        full = paid is not None and refunded.get(no, 0) >= paid
        if state in ("reconciled", "synced") and not (_paid_right(wechat) and paid_back):
            i4.append(f"{row['order_id']} ({no}): payflow {state}, WeChat {_ws(wechat)}, "
                      f"backend {backend.get('status')}")
        elif state == "closed" and ((wechat or {}).get("trade_state") in PAID_TRADE_STATES or paid_back):
            i4.append(f"{row['order_id']} ({no}): payflow closed, WeChat {_ws(wechat)}, "
                      f"backend {backend.get('status')}")
        elif state == "needs_review" and paid_back and no not in outside_orders:
            i4.append(f"{row['order_id']} ({no}): payflow needs_review but the backend marked it paid")
        elif state == "refunded" and not full:
            i4.append(f"{row['order_id']} ({no}): payflow refunded, WeChat refunded {refunded.get(no, 0)} of {paid} "
                      "for payflow")
        elif state == "refunded" and backend.get("refunded_amount") != paid:
            i4.append(f"{row['order_id']} ({no}): payflow refunded, the backend heard of "
                      f"{backend.get('refunded_amount')} of {paid} refunded")
        elif full and state != "refunded":
            i4.append(f"{row['order_id']} ({no}): refunded in full at WeChat ({paid}), payflow {state}")

    i5 = [f"{order_id} ({no}): acknowledged, missing from payflow's store"
          for order_id, no in ledgers.acknowledged.items() if p.get(no, {}).get("order_id") != order_id]
    i5 += [f"{no}: placed at WeChat, missing from payflow's store" for no in w if no not in p]
    i5 += [f"refund {rno} ({no}): acknowledged, missing from payflow's store"
           for rno, no in ledgers.refunds_acknowledged.items()
           if ledgers.payflow_refunds.get(rno, {}).get("out_trade_no") != no]

    i6 = []
    for d in ledgers.discrepancies:
        fate = ledgers.fates.get(order_of.get(d["out_trade_no"], ""))
        if d["category"] == "REFUND_UNKNOWN" and d["out_trade_no"] in outside_orders:
            continue
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


def refund_invariants(ledgers: Ledgers) -> list[Invariant]:
    w, b, p = ledgers.wechat, ledgers.backend, ledgers.payflow
    order_of = {no: row["order_id"] for no, row in p.items()}
    for order_id, row in b.items():  # the backend names the payment of every event it kept
        if row.get("out_trade_no"):
            order_of.setdefault(row["out_trade_no"], order_id)
    trade_of = {order: no for no, order in order_of.items()}

    r1 = []
    for rno, refund in ledgers.wechat_refunds.items():
        if refund.get("status") != "SUCCESS" or rno in ledgers.outside:
            continue
        no = refund["out_trade_no"]
        told = ((b.get(order_of.get(no, "")) or {}).get("refunds") or {}).get(rno)
        if told != refund["amount"]:
            heard = "nothing" if told is None else f"{told}"
            r1.append(f"refund {rno} ({no}): {refund['amount']} refunded at WeChat, the backend heard {heard}")
    for order_id, row in b.items():
        for rno, amount in (row.get("refunds") or {}).items():
            at_wechat = ledgers.wechat_refunds.get(rno) or {}
            if at_wechat.get("status") != "SUCCESS" or at_wechat.get("amount") != amount:
                r1.append(f"refund {rno} ({order_id}): {amount} refunded at the backend, WeChat "
                          f"{at_wechat.get('status', 'never made it')}")

    r2 = []
    for no, order in w.items():
        paid, refunded = order.get("paid_amount"), order.get("refunded_amount") or 0
        if refunded and (paid is None or refunded > paid):
            r2.append(f"{no}: WeChat refunded {refunded} of {paid} paid")
    for order_id, row in b.items():
        refunded = row.get("refunded_amount") or 0
        no = row.get("out_trade_no") or trade_of.get(order_id)
        paid = (w.get(no or "") or {}).get("paid_amount")
        if refunded and (paid is None or refunded > paid):
            r2.append(f"{order_id} ({no}): the backend heard of {refunded} refunded, {paid} paid at WeChat")
    for no, total in _refunded_by_payflow(ledgers, store=True).items():
        paid = (w.get(no) or {}).get("paid_amount")
        if paid is None or total > paid:
            r2.append(f"{no}: payflow's refunds total {total}, {paid} paid at WeChat")

    r3 = []
    for rno, refund in ledgers.wechat_refunds.items():
        if rno in ledgers.outside:
            continue
        ours = ledgers.payflow_refunds.get(rno)
        if ours is None:
            r3.append(f"refund {rno} ({refund['out_trade_no']}): at WeChat ({refund.get('status')}), "
                      "payflow never asked for it")
        elif (ours["out_trade_no"], ours["amount"]) != (refund["out_trade_no"], refund["amount"]):
            r3.append(f"refund {rno}: WeChat refunds {refund['amount']} of {refund['out_trade_no']}, payflow asked "
                      f"for {ours['amount']} of {ours['out_trade_no']}")
    reported = {(d["category"], d["out_trade_no"]) for d in ledgers.discrepancies}
    for rno, no in ledgers.outside.items():
        made = ledgers.wechat_refunds.get(rno)
        if made is None:
            r3.append(f"refund {rno} ({no}): to be made outside payflow, WeChat has no such refund")
        elif made.get("day") in ledgers.reconciled_days and ("REFUND_UNKNOWN", no) not in reported:
            r3.append(f"refund {rno} ({no}): made outside payflow, not reported by the reconciliation of "
                      f"{made['day']} (REFUND_UNKNOWN)")

    r4 = []
    for no, order in w.items():
        if order["trade_state"] != "CLOSED":
            continue
        closed_order = order_of.get(no)
        closed = (b.get(closed_order or "") or {}).get("closed_events") or []
        if not closed:
            r4.append(f"{closed_order} ({no}): closed at WeChat, the backend never heard payment.closed")
    for order_id, row in b.items():
        closed = row.get("closed_events") or []
        no = row.get("out_trade_no") or trade_of.get(order_id)
        if len(set(closed)) > 1:
            r4.append(f"{order_id} ({no}): {len(set(closed))} different payment.closed events")
        if closed and (w.get(no or "") or {}).get("trade_state") in PAID_TRADE_STATES:
            r4.append(f"{order_id} ({no}): payment.closed at the backend, paid at WeChat")

    return [
        Invariant("R1", "every refund WeChat reports as succeeded reaches the backend", tuple(r1)),
        Invariant("R2", "no payment is refunded past its amount", tuple(r2)),
        Invariant("R3", "no refund exists at WeChat that payflow did not request, except the injected one, "
                        "which reconciliation reports", tuple(r3)),
        Invariant("R4", "every payment closed at WeChat produces one payment.closed at the backend", tuple(r4)),
    ]


def _refunded_by_payflow(ledgers: Ledgers, *, store: bool = False) -> dict[str, int]:
    """out_trade_no → what WeChat refunded of it for payflow (SUCCESS refunds, not the outside one); with `store`,
    what payflow's own store holds as refunded (succeeded, synced)."""
    totals: dict[str, int] = {}
    if store:
        for refund in ledgers.payflow_refunds.values():
            if refund.get("state") in ("succeeded", "synced"):
                totals[refund["out_trade_no"]] = totals.get(refund["out_trade_no"], 0) + refund["amount"]
        return totals
    for rno, refund in ledgers.wechat_refunds.items():
        if refund.get("status") == "SUCCESS" and rno not in ledgers.outside:
            totals[refund["out_trade_no"]] = totals.get(refund["out_trade_no"], 0) + refund["amount"]
    return totals


def _ws(order: Mapping[str, Any] | None) -> str:
    if not order:
        return "unknown"
    return f"{order['trade_state']} {order.get('paid_amount')}/{order['amount']}"
