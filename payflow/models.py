"""Plain records: a payment, one event of its timeline, an inbound notification."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from payflow.states import PAID_STATES, State
from payflow.states.refunds import RefundState


@dataclasses.dataclass(frozen=True, slots=True)
class Payment:
    out_trade_no: str
    order_id: str
    amount: int  # fen
    description: str
    openid: str
    state: State
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime
    expires_at: dt.datetime
    event_id: str  # the one id of the paid event sent to the backend, for every retry
    currency: str = "CNY"
    attach: str | None = None
    prepay_id: str | None = None
    transaction_id: str | None = None
    paid_at: dt.datetime | None = None
    paid_amount: int | None = None
    next_attempt_at: dt.datetime | None = None
    attempts: int = 0
    lease_token: str | None = None
    trade_type: str = "jsapi"  # the product it is sold through (wechat.api.TRADE_TYPES)
    appid: str | None = None  # the appid it was placed with; None: PAYFLOW_WECHAT_APPID (payments from before)
    payer_client_ip: str | None = None  # h5
    h5_type: str | None = None  # h5
    pay_url: str | None = None  # what WeChat answered a Native (code_url) or H5 (h5_url) placement

    @property
    def paid(self) -> bool:
        return self.state in PAID_STATES

    def view(self, refunded_amount: int | None = None) -> dict[str, Any]:
        """The public view of DESIGN §6.2 (`GET /v1/payments/{out_trade_no}`, which adds `refunded_amount`)."""
        view = {
            "out_trade_no": self.out_trade_no,
            "order_id": self.order_id,
            "state": self.state.value,
            "amount": self.amount,
            "paid": self.paid,
            "transaction_id": self.transaction_id,
            "paid_at": _iso(self.paid_at),
            "expires_at": _iso(self.expires_at),
            "trade_type": self.trade_type,
        }
        if refunded_amount is not None:
            view["refunded_amount"] = refunded_amount
        return view


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One row of a payment's timeline; `from_state` is None for the creation event."""

    id: int
    out_trade_no: str
    from_state: State | None
    to_state: State
    trigger: str
    source: str
    detail: dict[str, Any]
    at: dt.datetime

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "from": self.from_state.value if self.from_state else None,
            "to": self.to_state.value,
            "trigger": self.trigger,
            "source": self.source,
            "detail": self.detail,
            "at": _iso(self.at),
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Notification:
    """An inbound WeChat notification, kept verbatim (decrypted resource) and deduplicated by its id."""

    notification_id: str
    received_at: dt.datetime
    event_type: str
    out_trade_no: str | None
    outcome: str
    resource: dict[str, Any]
    # The decrypted resource exactly as WeChat sent it, when known: stored as is (no re-encoding).
    resource_json: str | None = dataclasses.field(default=None, compare=False, repr=False)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclasses.dataclass(frozen=True, slots=True)
class Discrepancy:
    """One reconciliation finding; unique per (bill_date, out_trade_no, category)."""

    bill_date: dt.date
    out_trade_no: str
    # AMOUNT_MISMATCH, PLATFORM_MISS, BANK_MISS, PAID_AFTER_CLOSE, REFUND (before payflow refunded),
    # REFUND_UNKNOWN, REFUND_MISMATCH, REFUND_MISSING
    category: str
    detail: dict[str, Any]
    found_at: dt.datetime

    def view(self) -> dict[str, Any]:
        return {"bill_date": self.bill_date.isoformat(), "out_trade_no": self.out_trade_no,
                "category": self.category, "detail": self.detail, "found_at": _iso(self.found_at)}


@dataclasses.dataclass(frozen=True, slots=True)
class ReconciliationRun:
    id: int
    bill_date: dt.date
    started_at: dt.datetime
    finished_at: dt.datetime | None
    status: str  # running, clean, discrepancies, failed
    counts: dict[str, int]
    error: str | None = None

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "bill_date": self.bill_date.isoformat(), "started_at": _iso(self.started_at),
                "finished_at": _iso(self.finished_at), "status": self.status, "counts": self.counts,
                "error": self.error}


@dataclasses.dataclass(frozen=True, slots=True)
class Refund:
    """A refund of (part of) one payment; its own outbox row, as a payment is for the paid event."""

    out_refund_no: str
    out_trade_no: str
    amount: int  # fen
    state: RefundState
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime
    event_id: str  # the id of `refund.succeeded`; `refund.failed` derives its own from it (backend.derived_event_id)
    origin: str  # who asked: api, admin, auto
    reason: str | None = None  # sent to WeChat: shown to the payer
    cause: str | None = None  # why: the operator's note, or the review reason an automatic refund answers
    refund_id: str | None = None  # WeChat's
    succeeded_at: dt.datetime | None = None
    next_attempt_at: dt.datetime | None = None
    attempts: int = 0
    lease_token: str | None = None
    billed_on: dt.date | None = None  # the bill date whose REFUND line matched it
    failure: str | None = None  # WeChat's code when it refused or closed the refund

    def view(self) -> dict[str, Any]:
        """The public view (`GET /v1/refunds/{out_refund_no}`)."""
        return {
            "out_refund_no": self.out_refund_no,
            "out_trade_no": self.out_trade_no,
            "state": self.state.value,
            "amount": self.amount,
            "reason": self.reason,
            "refund_id": self.refund_id,
            "created_at": _iso(self.created_at),
            "succeeded_at": _iso(self.succeeded_at),
            "failure": self.failure,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class RefundEvent:
    """One row of a refund's timeline; `from_state` is None for the creation event."""

    id: int
    out_refund_no: str
    from_state: RefundState | None
    to_state: RefundState
    trigger: str
    source: str
    detail: dict[str, Any]
    at: dt.datetime

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "from": self.from_state.value if self.from_state else None, "to": self.to_state.value,
                "trigger": self.trigger, "source": self.source, "detail": self.detail, "at": _iso(self.at)}
