"""Refunds at the simulated WeChat Pay (docs/wechatpay-refunds.md): applications with re-entry by out_refund_no,
completion on the simulator's clock (PROCESSING → SUCCESS, or ABNORMAL for the fault plan's share), the
operator's refunds and actions, and the views and notification resources WeChat shows for them.

Pure apart from the notifier it queues on: every operation is given `now`.
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from payflow import logs
from simulator.wechat import bills
from simulator.wechat.faults import FaultDice
from simulator.wechat.ledger import (
    REFUND_WINDOW,
    Ledger,
    LedgerError,
    Order,
    Refund,
    RefundRequest,
    RefundStatus,
    rfc3339,
)
from simulator.wechat.notifier import Notifier

log = logs.get_logger(__name__)

# The payer pays from WeChat balance in this simulator, so refunds go back there (§ "user_received_account").
USER_RECEIVED_ACCOUNT = "支付用户零钱"
DEFAULT_FUNDS_ACCOUNT = "AVAILABLE"


class RefundDesk:
    """Accepts refunds into the ledger and completes them when they fall due; queues their notifications on
    the notifier it is bound to (`bind`, at start-up: the notifier owns a client session)."""

    def __init__(self, ledger: Ledger, dice: FaultDice, *, time_factor: float = 1.0) -> None:
        if time_factor <= 0:
            raise ValueError("time_factor must be positive")
        self._ledger = ledger
        self._dice = dice
        self._time_factor = time_factor
        self._pending: dict[str, tuple[int, Refund]] = {}  # PROCESSING refunds by out_refund_no, with a seq
        self._seq = itertools.count()
        self._notifier: Notifier | None = None

    def bind(self, notifier: Notifier) -> None:
        self._notifier = notifier
        notifier.attach(self)

    # -- the merchant API -----------------------------------------------------------------------

    def apply(self, request: RefundRequest, now: dt.datetime) -> tuple[Order, Refund]:
        """Accept a refund application, or re-enter one: the same out_refund_no with the same parameters gets
        that refund as it is now. Raises LedgerError (refund_api.py maps the codes to WeChat's errors)."""
        self.advance(now)
        existing = self._ledger.find_refund(request.out_refund_no)
        if existing is not None:
            order = self._ledger.get(existing.out_trade_no, now)
            _check_reentry(existing, order, request)
            return order, existing
        order = self._order_of(request, now)
        if order.paid_amount is not None and request.total != order.paid_amount:
            raise LedgerError("AMOUNT_MISMATCH", f"amount.total {request.total} is not the order's "
                                                 f"{order.paid_amount}")
        return order, self._accept(order, now, request.refund, request.out_refund_no, reason=request.reason,
                                   notify_url=request.notify_url, funds_account=request.funds_account,
                                   params=request.params)

    def find(self, out_refund_no: str, now: dt.datetime) -> tuple[Order, Refund]:
        self.advance(now)
        refund = self._ledger.find_refund(out_refund_no)
        if refund is None:
            raise LedgerError("REFUND_NOT_EXIST", f"refund {out_refund_no} does not exist")
        return self._ledger.get(refund.out_trade_no, now), refund

    def refunds(self, now: dt.datetime) -> list[tuple[Order, Refund]]:
        self.advance(now)
        return [(self._ledger.get(r.out_trade_no, now), r) for r in self._ledger.refunds()]

    # -- the merchant platform (control API) ----------------------------------------------------

    def refund_outside(self, out_trade_no: str, now: dt.datetime, amount: int | None = None, *,
                       out_refund_no: str | None = None, reason: str | None = None) -> tuple[Order, Refund]:
        """A refund made on the merchant platform, not through the API: it completes and notifies like any
        other, at the order's notify_url (standing in for the refund notify URL configured there)."""
        self.advance(now)
        order = self._ledger.get(out_trade_no, now)
        return order, self._accept(order, now, amount, out_refund_no, reason=reason)

    def close(self, out_refund_no: str, now: dt.datetime) -> tuple[Order, Refund]:
        """退款关闭: a processing or abnormal refund is closed; its amount becomes refundable again."""
        order, refund = self.find(out_refund_no, now)
        if refund.status not in (RefundStatus.PROCESSING, RefundStatus.ABNORMAL):
            raise LedgerError("REFUND_FINISHED", f"refund {out_refund_no} is {refund.status}, it cannot close")
        self._finish(order, refund, RefundStatus.CLOSED, now)
        return order, refund

    def mark_abnormal(self, out_refund_no: str, now: dt.datetime) -> tuple[Order, Refund]:
        """退款异常 now, e.g. the payer's card was cancelled."""
        order, refund = self.find(out_refund_no, now)
        if refund.status is not RefundStatus.PROCESSING:
            raise LedgerError("REFUND_FINISHED", f"refund {out_refund_no} is {refund.status}, not PROCESSING")
        self._finish(order, refund, RefundStatus.ABNORMAL, now)
        return order, refund

    # -- the clock ------------------------------------------------------------------------------

    def advance(self, now: dt.datetime) -> list[Refund]:
        """Complete every processing refund due by `now`, in due order; returns them."""
        due = sorted((entry for entry in self._pending.values() if entry[1].due is not None
                      and entry[1].due <= now), key=lambda entry: (entry[1].due, entry[0]))
        finished = []
        for _, refund in due:
            assert refund.due is not None
            # It completed at its due time, not when someone looked: that is its success_time.
            self._finish(self._ledger.get(refund.out_trade_no, now), refund, refund.outcome, refund.due)
            finished.append(refund)
        return finished

    def next_due(self) -> dt.datetime | None:
        return min((r.due for _, r in self._pending.values() if r.due is not None), default=None)

    # -- internals ------------------------------------------------------------------------------

    def _order_of(self, request: RefundRequest, now: dt.datetime) -> Order:
        # transaction_id wins when both are given (the v2 rule); a contradiction is refused.
        if request.transaction_id is not None:
            order = self._ledger.by_transaction_id(request.transaction_id, now)
            if request.out_trade_no is not None and request.out_trade_no != order.out_trade_no:
                raise LedgerError("ORDER_MISMATCH", "transaction_id and out_trade_no name different orders")
            return order
        assert request.out_trade_no is not None
        return self._ledger.get(request.out_trade_no, now)

    def _accept(self, order: Order, now: dt.datetime, amount: int | None, out_refund_no: str | None,
                **details: Any) -> Refund:
        if order.success_time is not None and now - order.success_time > REFUND_WINDOW:
            raise LedgerError("REFUND_EXPIRED", f"order {order.out_trade_no} was paid more than a year ago")
        refund = self._ledger.refund(order.out_trade_no, now, amount, out_refund_no,
                                     status=RefundStatus.PROCESSING, **details)
        faults = self._dice.refund()
        refund.outcome = RefundStatus.ABNORMAL if faults.abnormal else RefundStatus.SUCCESS
        refund.due = now + dt.timedelta(seconds=faults.delay / self._time_factor)
        self._pending[refund.out_refund_no] = (next(self._seq), refund)
        log.info("refund.accepted", out_trade_no=order.out_trade_no, out_refund_no=refund.out_refund_no,
                 amount=refund.amount, via="api" if refund.params is not None else "platform")
        if self._notifier is not None:
            self._notifier.wake()  # its loop sleeps until the next thing due, which may now be this refund
        return refund

    def _finish(self, order: Order, refund: Refund, status: RefundStatus, at: dt.datetime) -> None:
        self._pending.pop(refund.out_refund_no, None)
        refund.status, refund.finished_at, refund.due = status, at, None
        if status is RefundStatus.SUCCESS:
            refund.success_time = at
        log.info("refund.finished", out_trade_no=order.out_trade_no, out_refund_no=refund.out_refund_no,
                 refund_status=str(status))
        url = refund.notify_url or order.notify_url
        if self._notifier is not None and url is not None:
            self._notifier.enqueue_refund(refund, resource(order, refund), url, at)


def _check_reentry(existing: Refund, order: Order, request: RefundRequest) -> None:
    if (request.out_trade_no is not None and request.out_trade_no != existing.out_trade_no) or (
            request.transaction_id is not None and request.transaction_id != order.transaction_id):
        raise LedgerError("PARAMS_MISMATCH", f"out_refund_no {existing.out_refund_no} is another order's refund")
    if request.refund != existing.amount or request.total != order.paid_amount:
        raise LedgerError("AMOUNT_MISMATCH", f"refund {existing.out_refund_no} was for {existing.amount} of "
                                             f"{order.paid_amount} fen")
    if existing.params is not None and (request.reason, request.notify_url, request.funds_account) != (
            existing.reason, existing.notify_url, existing.funds_account):
        raise LedgerError("PARAMS_MISMATCH", f"refund {existing.out_refund_no} was applied for differently")


def view(order: Order, refund: Refund) -> dict[str, Any]:
    """The refund as the apply and query answers show it; real answers list keys alphabetically."""
    assert order.paid_amount is not None
    paid = order.paid_amount
    answer: dict[str, Any] = {
        "amount": {
            "currency": "CNY", "discount_refund": 0, "from": [], "payer_refund": refund.amount,
            "payer_total": paid, "refund": refund.amount, "refund_fee": bills.fee_fen(refund.amount),
            "settlement_refund": refund.amount, "settlement_total": paid, "total": paid,
        },
        "channel": "ORIGINAL",
        "create_time": rfc3339(refund.created),
        "funds_account": refund.funds_account or DEFAULT_FUNDS_ACCOUNT,
        "out_refund_no": refund.out_refund_no,
        "out_trade_no": order.out_trade_no,
        "promotion_detail": [],
        "refund_id": refund.refund_id,
        "status": str(refund.status),
        "transaction_id": order.transaction_id,
        "user_received_account": USER_RECEIVED_ACCOUNT,
    }
    if refund.success_time is not None:
        answer["success_time"] = rfc3339(refund.success_time)
    return dict(sorted(answer.items()))


def resource(order: Order, refund: Refund) -> dict[str, Any]:
    """The decrypted resource of a REFUND.* notification, in the field order of real ones."""
    assert order.paid_amount is not None
    plain: dict[str, Any] = {
        "mchid": order.mchid, "out_trade_no": order.out_trade_no, "transaction_id": order.transaction_id,
        "out_refund_no": refund.out_refund_no, "refund_id": refund.refund_id, "refund_status": str(refund.status),
    }
    if refund.success_time is not None:
        plain["success_time"] = rfc3339(refund.success_time)
    plain["amount"] = {"total": order.paid_amount, "refund": refund.amount, "payer_total": order.paid_amount,
                       "payer_refund": refund.amount}
    plain["user_received_account"] = USER_RECEIVED_ACCOUNT
    return plain
