"""What the console's pages show, gathered from the same service and store calls as the admin API and
`/metrics` (listing and `stuck`, timelines, counts by state, the due backlog, reconciliation runs); nothing
here decides anything about a payment."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterable
from typing import Any

from payflow import errors, models
from payflow.clock import SHANGHAI
from payflow.http import payloads
from payflow.service import STUCK, PaymentService, operating
from payflow.states import State, Trigger

OVERVIEW_ROWS = 20  # payments per list on the overview; the listing page pages through the rest
MAX_QUERY = 128  # characters of a search: the longest identifier is an order_id (64 bytes)


@dataclasses.dataclass(frozen=True, slots=True)
class Reviewed:
    payment: models.Payment
    reason: str | None  # the `flag` event's reason (amount_mismatch, backend_rejected, ...)
    flagged_at: dt.datetime | None


@dataclasses.dataclass(frozen=True, slots=True)
class Reconciliation:
    bill_date: dt.date
    runs: list[models.ReconciliationRun]
    discrepancies: list[models.Discrepancy]

    @property
    def last_run(self) -> models.ReconciliationRun | None:
        return self.runs[-1] if self.runs else None


@dataclasses.dataclass(frozen=True, slots=True)
class Overview:
    now: dt.datetime
    counts: list[tuple[State, int]]
    total: int
    stuck: list[models.Payment]
    more_stuck: str | None  # the listing's next cursor
    review: list[Reviewed]
    more_review: str | None
    due: int  # payments whose next attempt is due now (the sweeper's backlog)
    oldest_due: dt.datetime | None
    forward_queue: int  # first forwards this process has queued and not started
    reconciliation: Reconciliation


async def overview(service: PaymentService) -> Overview:
    store, now = service.store, service.now()
    counts = await store.count_by_state()
    stuck = await service.list_payments(state=STUCK, limit=OVERVIEW_ROWS, cursor=None)
    review = await service.list_payments(state=State.NEEDS_REVIEW.value, limit=OVERVIEW_ROWS, cursor=None)
    due, oldest = await store.due_stats(now)
    return Overview(
        now=now,
        counts=[(state, counts.get(state, 0)) for state in State],
        total=sum(counts.values()),
        stuck=stuck.payments, more_stuck=stuck.next_cursor,
        review=[await _reviewed(service, p) for p in review.payments], more_review=review.next_cursor,
        due=due, oldest_due=oldest,
        forward_queue=service.forwarding.backlog,
        reconciliation=await reconciliation(service, latest_bill_date(now)),
    )


async def _reviewed(service: PaymentService, payment: models.Payment) -> Reviewed:
    flags = [e for e in await service.timeline(payment.out_trade_no) if e.trigger == Trigger.FLAG.value]
    last = flags[-1] if flags else None
    reason = last.detail.get("reason") if last is not None else None
    return Reviewed(payment, reason if isinstance(reason, str) else None, last.at if last else None)


def latest_bill_date(now: dt.datetime) -> dt.date:
    """The bill that today's reconciliation works on: yesterday's, in WeChat's time zone."""
    return now.astimezone(SHANGHAI).date() - dt.timedelta(days=1)


async def reconciliation(service: PaymentService, day: dt.date) -> Reconciliation:
    store = service.store
    return Reconciliation(day, await store.reconciliation_runs(day), await store.discrepancies(day))


@dataclasses.dataclass(frozen=True, slots=True)
class PaymentPage:
    payment: models.Payment
    events: list[models.Event]
    notifications: list[models.Notification]  # every notification WeChat sent about it, whatever came of it
    forwards: list[models.Event]  # every delivery attempt to the backend (a timeline row each), with its answer
    next_step: str | None  # what the next scheduled attempt will do
    actions: list[tuple[str, bool]]  # every operator action, and whether it applies to the payment's state
    refunds: list[tuple[models.Refund, list[models.RefundEvent]]] = dataclasses.field(default_factory=list)


async def payment_page(service: PaymentService, out_trade_no: str) -> PaymentPage:
    """One payment as stored (a GET changes nothing: no query on read here) and its whole timeline."""
    payment = await service.get_payment(out_trade_no)
    events = await service.timeline(out_trade_no)
    return PaymentPage(
        payment, events,
        notifications=await service.store.notifications(out_trade_no),
        forwards=[e for e in events if "attempt" in e.detail and "event_id" in e.detail],
        next_step=_NEXT_STEP.get(payment.state) if payment.next_attempt_at is not None else None,
        # Operating's own table, so the page offers what `operate` accepts (it still has the last word: 409).
        actions=[(action, payment.state in operating._APPLIES[action]) for action in operating.ACTIONS],
        refunds=[(refund, await service.store.refund_events(refund.out_refund_no))
                 for refund in await service.store.refunds_of(out_trade_no)],
    )


_NEXT_STEP = {
    State.CREATED: "query WeChat (was the order placed?)",
    State.PREPAID: "query WeChat (paid yet?), or close at WeChat once expired",
    State.NOTIFIED: "deliver the paid event to the backend",
    State.CLOSED: "tell the backend payment.closed",
}


def search_text(value: str | None) -> str:
    """The search box's text, or InvalidRequest (422) for something no identifier can be."""
    text = (value or "").strip()
    if len(text) > MAX_QUERY:
        raise errors.InvalidRequest(f"search for at most {MAX_QUERY} characters", field="q")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text):
        raise errors.InvalidRequest("search text must not contain control characters", field="q")
    return text


async def search(service: PaymentService, text: str) -> models.Payment | None:
    """The payment that `text` names: its out_trade_no, else its business order_id, else WeChat's transaction_id."""
    if payloads.OUT_TRADE_NO.match(text):
        try:
            return await service.get_payment(text)
        except errors.NotFound:
            pass
    return await service.store.get_by_order_id(text) or await service.store.get_by_transaction_id(text)


def detail_items(detail: dict[str, Any], skip: Iterable[str] = ()) -> list[tuple[str, str]]:
    """An event's detail as (key, text) pairs for display, less the keys in `skip`; the template escapes both."""
    skipped = set(skip)
    return [(key, value if isinstance(value, str) else _compact(value)) for key, value in detail.items()
            if value is not None and key not in skipped]


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)
