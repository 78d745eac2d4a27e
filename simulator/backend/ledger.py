"""The backend simulator's ledger: orders, the paid events received, and idempotent decisions (no I/O)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from typing import Any, Literal

from payflow import signing

OrderStatus = Literal["pending", "paid", "cancelled"]


class InvalidInput(ValueError):
    """A request body field is missing or wrong; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class LedgerError(Exception):
    """A control request the ledger refuses; `code` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclasses.dataclass(frozen=True)
class PaidEvent:
    event_id: str
    out_trade_no: str
    order_id: str
    transaction_id: str
    amount: int
    currency: str
    paid_at: str
    attach: str | None = None

    @classmethod
    def parse(cls, data: Any, idempotency_key: str | None) -> PaidEvent:
        if not isinstance(data, dict):
            raise InvalidInput("body", "must be a JSON object")
        values: dict[str, Any] = {}
        for name in ("event_id", "out_trade_no", "order_id", "transaction_id", "currency", "paid_at"):
            values[name] = text_field(data, name)
        amount = data.get("amount")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
            raise InvalidInput("amount", f"must be an integer number of fen >= 1, got {amount!r}")
        attach = data.get("attach")
        if attach is not None and not isinstance(attach, str):
            raise InvalidInput("attach", "must be a string or null")
        # The header is what a real backend dedupes on before parsing; it must agree with the body.
        if idempotency_key != values["event_id"]:
            raise InvalidInput(signing.IDEMPOTENCY_HEADER, f"must equal event_id, got {idempotency_key!r}")
        return cls(amount=amount, attach=attach, **values)


EVENT_TYPES = ("payment.paid", "payment.closed", "refund.succeeded", "refund.failed")


@dataclasses.dataclass(frozen=True)
class OtherEvent:
    """`payment.closed`, `refund.succeeded` or `refund.failed`: what the ledger keeps of one."""

    type: str
    event_id: str
    out_trade_no: str
    order_id: str
    out_refund_no: str | None = None
    amount: int | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], idempotency_key: str | None) -> OtherEvent:
        values = {name: text_field(data, name) for name in ("type", "event_id", "out_trade_no", "order_id")}
        amount = data.get("amount")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
            raise InvalidInput("amount", f"must be an integer number of fen >= 1, got {amount!r}")
        out_refund_no = text_field(data, "out_refund_no") if values["type"].startswith("refund.") else None
        if idempotency_key != values["event_id"]:
            raise InvalidInput(signing.IDEMPOTENCY_HEADER, f"must equal event_id, got {idempotency_key!r}")
        return cls(out_refund_no=out_refund_no, amount=amount, **values)


def event_type(data: Any) -> str:
    """The event's `type` (payflow before refunds sent none: a paid event)."""
    if not isinstance(data, dict):
        raise InvalidInput("body", "must be a JSON object")
    kind = data.get("type", "payment.paid")
    if kind not in EVENT_TYPES:
        raise InvalidInput("type", f"must be one of {', '.join(EVENT_TYPES)}, got {kind!r}")
    return str(kind)


@dataclasses.dataclass
class Order:
    order_id: str
    out_trade_no: str | None
    amount: int | None  # None when payflow told us about it before anyone registered it
    registered: bool
    status: OrderStatus = "pending"
    paid_events_received: int = 0
    duplicates: int = 0
    rejected_events: int = 0
    event_ids: list[str] = dataclasses.field(default_factory=list)
    applied_event_id: str | None = None
    transaction_id: str | None = None
    paid_amount: int | None = None
    paid_at: str | None = None
    first_paid_at: dt.datetime | None = None
    closed_events: list[str] = dataclasses.field(default_factory=list)  # distinct event ids of payment.closed
    refunds: dict[str, int] = dataclasses.field(default_factory=dict)  # out_refund_no → amount, refund.succeeded
    failed_refunds: list[str] = dataclasses.field(default_factory=list)  # out_refund_no of refund.failed
    other_events_received: int = 0  # deliveries of the three, duplicates included

    @property
    def refunded_amount(self) -> int:
        return sum(self.refunds.values())

    def to_json(self) -> dict[str, Any]:
        body = dataclasses.asdict(self)
        body["first_paid_at"] = self.first_paid_at.isoformat() if self.first_paid_at else None
        body["refunded_amount"] = self.refunded_amount
        return body


class Outcome(enum.Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    CANCELLED = "cancelled"
    AMOUNT_MISMATCH = "amount_mismatch"
    ORDER_MISMATCH = "order_mismatch"


@dataclasses.dataclass(frozen=True)
class Decision:
    outcome: Outcome
    order: Order
    expected: Any = None  # what the ledger holds, for the two mismatches


class Ledger:
    """Orders and the paid events received for them. Pure: no I/O, time is passed in."""

    def __init__(self) -> None:
        self.orders: dict[str, Order] = {}
        self._by_trade_no: dict[str, str] = {}
        self._by_event: dict[str, str] = {}
        self.rejected_signatures = 0
        self.malformed_events = 0

    def register(self, order_id: str, amount: int, out_trade_no: str | None = None) -> tuple[Order, bool]:
        """Register an order as pending; the same registration again is a no-op. Returns (order, created)."""
        known = self.orders.get(order_id)
        if known is not None:
            same = known.registered and known.amount == amount and out_trade_no in (None, known.out_trade_no)
            if not same:
                raise LedgerError("ORDER_EXISTS", f"order {order_id} is already known with other details")
            return known, False
        if out_trade_no is not None and out_trade_no in self._by_trade_no:
            raise LedgerError("OUT_TRADE_NO_TAKEN", f"out_trade_no {out_trade_no} belongs to another order")
        order = Order(order_id=order_id, out_trade_no=out_trade_no, amount=amount, registered=True)
        self._add(order)
        return order, True

    def cancel(self, order_id: str) -> Order:
        order = self.orders.get(order_id)
        if order is None:
            raise LedgerError("ORDER_NOT_FOUND", f"order {order_id} is not known")
        if order.status == "paid":
            raise LedgerError("ORDER_PAID", f"order {order_id} is already paid; it cannot be cancelled")
        order.status = "cancelled"
        return order

    def receive(self, event: PaidEvent, now: dt.datetime) -> Decision:
        """Apply a verified paid event at most once per order; every other outcome changes only counters."""
        order = self._find(event)
        if order is None:
            # payflow is the system of record for payments: an unregistered order is still paid.
            order = Order(event.order_id, event.out_trade_no, amount=None, registered=False)
            self._add(order)
        decision = self._judge(order, event)
        if decision.outcome is Outcome.ORDER_MISMATCH:
            return decision  # the event is about another order; this one's counters stay its own
        order.paid_events_received += 1
        if event.event_id not in order.event_ids:
            order.event_ids.append(event.event_id)
        if decision.outcome is Outcome.APPLIED:
            order.status = "paid"
            order.applied_event_id = event.event_id
            order.transaction_id = event.transaction_id
            order.paid_amount = event.amount
            order.paid_at = event.paid_at
            order.first_paid_at = now
            if order.out_trade_no is None:
                order.out_trade_no = event.out_trade_no
            self._by_trade_no.setdefault(event.out_trade_no, order.order_id)
        elif decision.outcome is Outcome.DUPLICATE:
            order.duplicates += 1
        else:
            order.rejected_events += 1
        if decision.outcome in (Outcome.APPLIED, Outcome.DUPLICATE):
            self._by_event.setdefault(event.event_id, order.order_id)
        return decision

    def receive_other(self, event: OtherEvent) -> Order:
        """payment.closed, refund.succeeded, refund.failed: kept once per event id, whatever the order's status
        (a cancelled order is exactly the one whose refund the backend waits for)."""
        order = self.orders.get(event.order_id)
        if order is None:
            order = Order(event.order_id, event.out_trade_no, amount=None, registered=False)
            self._add(order)
        order.other_events_received += 1
        if event.type == "payment.closed":
            if event.event_id not in order.closed_events:
                order.closed_events.append(event.event_id)
        elif event.type == "refund.succeeded":
            assert event.out_refund_no is not None and event.amount is not None
            order.refunds[event.out_refund_no] = event.amount
        elif event.out_refund_no not in order.failed_refunds:
            assert event.out_refund_no is not None
            order.failed_refunds.append(event.out_refund_no)
        return order

    def _judge(self, order: Order, event: PaidEvent) -> Decision:
        if order.order_id != event.order_id:
            return Decision(Outcome.ORDER_MISMATCH, order, expected=order.order_id)
        if order.status == "cancelled":
            return Decision(Outcome.CANCELLED, order)
        expected = order.amount if order.registered else order.paid_amount
        if expected is not None and expected != event.amount:
            return Decision(Outcome.AMOUNT_MISMATCH, order, expected=expected)
        if order.status == "paid":
            return Decision(Outcome.DUPLICATE, order)
        return Decision(Outcome.APPLIED, order)

    def _find(self, event: PaidEvent) -> Order | None:
        # event_id first, then out_trade_no, then order_id: a retry is recognised however it is keyed.
        for index, key in ((self._by_event, event.event_id), (self._by_trade_no, event.out_trade_no)):
            if key in index:
                return self.orders[index[key]]
        return self.orders.get(event.order_id)

    def _add(self, order: Order) -> None:
        self.orders[order.order_id] = order
        if order.out_trade_no is not None:
            self._by_trade_no[order.out_trade_no] = order.order_id

    def totals(self) -> dict[str, int]:
        orders = list(self.orders.values())
        return {
            "orders": len(orders),
            "registered": sum(o.registered for o in orders),
            **{state: sum(o.status == state for o in orders) for state in ("pending", "paid", "cancelled")},
            "paid_events_received": sum(o.paid_events_received for o in orders),
            "duplicates": sum(o.duplicates for o in orders),
            "rejected_events": sum(o.rejected_events for o in orders),
            "rejected_signatures": self.rejected_signatures,
            "malformed_events": self.malformed_events,
            "closed_orders": sum(bool(o.closed_events) for o in orders),
            "refunds": sum(len(o.refunds) for o in orders),
            "refunded_amount": sum(o.refunded_amount for o in orders),
            "failed_refunds": sum(len(o.failed_refunds) for o in orders),
        }


def text_field(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidInput(name, "must be a non-empty string")
    return value
