"""Refunds, end to end: stored before WeChat is asked, submitted (and re-submitted with the identical request),
followed by notification, query and bill to their outcome, and told to the backend (`refund.succeeded`,
`refund.failed`) until it acknowledges; a payment whose refunds reach its whole amount becomes `refunded`.

The refund row is its own outbox, as a payment is: whatever a crash interrupts, its `next_attempt_at` brings the
sweeper back to it — `created` is re-submitted, `processing` and `abnormal` are queried, `succeeded`, `closed`
and `failed` are forwarded.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import re
import uuid
from collections.abc import Mapping
from typing import Any

from payflow import errors, logs, models, ratelimit, states
from payflow.backend import Backend, refund_event_body
from payflow.ratelimit import Priority
from payflow.service import outbox
from payflow.service.core import Core
from payflow.settings import REFUND_QUERY_AFTER
from payflow.states import Source, State, Trigger
from payflow.states import refunds as refund_states
from payflow.states.refunds import RefundState, RefundTrigger
from payflow.store import DECIDE_RETRIES, Note
from payflow.wechat.api import RefundAnswer, RefundRequest, WechatApi
from payflow.wechat.client import parse_refund
from payflow.wechat.notify import MalformedNotification, VerifiedNotification

log = logs.get_logger("payflow.service")

# A payment WeChat took money for: what can be refunded (a `needs_review` one only if it was paid).
REFUNDABLE = frozenset({State.NOTIFIED, State.SYNCED, State.RECONCILED, State.NEEDS_REVIEW})
OUT_REFUND_NO = re.compile(r"^[0-9A-Za-z_\-|*@]{1,64}$")  # WeChat's charset and length
REASON_MAX = 80  # characters WeChat takes
# WeChat refused this request, but not the refund: asking again later may succeed.
RETRY_LATER = frozenset({"SYSTEM_ERROR", "NOT_ENOUGH", "FREQUENCY_LIMITED"})
# WeChat's refund status → the trigger that takes a refund there.
_STATUS_TRIGGER = {"SUCCESS": RefundTrigger.SUCCEED, "ABNORMAL": RefundTrigger.ABNORMAL,
                   "CLOSED": RefundTrigger.CLOSE, "PROCESSING": RefundTrigger.ACCEPT}
READ_QUERIES_KEPT = 10_000


class NotRefundable(errors.Conflict):
    """The payment is not paid (or already refunded): nothing to refund (HTTP 409 with its state)."""

    code = "not_refundable"

    def __init__(self, payment: models.Payment, *, why: str = "only a paid payment is refunded") -> None:
        super().__init__(f"payment {payment.out_trade_no} is {payment.state.value}: {why}")
        self.state = payment.state.value


class RefundConflict(errors.Conflict):
    """The out_refund_no names a refund with other fields (HTTP 409)."""

    code = "refund_conflict"


class RefundDeferred(errors.WechatRetryable):
    """The refund is stored but WeChat could not be asked now; the sweeper re-submits it (HTTP 503)."""

    code = "refund_deferred"

    def __init__(self, message: str, *, refund: models.Refund) -> None:
        super().__init__(message)
        self.refund = refund


@dataclasses.dataclass(frozen=True, slots=True)
class NewRefund:
    out_trade_no: str
    amount: int
    reason: str | None = None
    out_refund_no: str | None = None
    origin: str = "api"  # api, admin, auto
    cause: str | None = None


class Refunding:
    def __init__(self, core: Core, wechat: WechatApi, backend: Backend) -> None:
        self.core = core
        self.wechat = wechat
        self.backend = backend
        self._read_queries: collections.OrderedDict[str, dt.datetime] = collections.OrderedDict()

    # --- asking for a refund ------------------------------------------------------------------

    async def create_refund(self, new: NewRefund, *, source: Source = Source.API) -> tuple[models.Refund, bool]:
        """Store the refund, then ask WeChat; `(refund, created)`. The same out_refund_no with the same fields
        returns the stored refund (`created` False); other fields raise `RefundConflict`. `RefundDeferred` when
        WeChat cannot be asked now (the refund is kept and re-driven)."""
        core = self.core
        _check(new)
        payment = await core.load(new.out_trade_no)
        if new.out_refund_no is not None:
            stored = await core.store.get_refund(new.out_refund_no)
            if stored is not None:
                return self._same(stored, new), False
        if payment.state not in REFUNDABLE or payment.transaction_id is None:
            raise NotRefundable(payment)
        now = core.now()
        refund = models.Refund(
            out_refund_no=new.out_refund_no or f"RF{uuid.uuid4().hex[:30]}", out_trade_no=payment.out_trade_no,
            amount=new.amount, state=RefundState.CREATED, version=1, created_at=now, updated_at=now,
            event_id=uuid.uuid4().hex, origin=new.origin, reason=new.reason, cause=new.cause,
            # The submit below is this process's; if it dies first, the sweeper re-submits after the lease.
            next_attempt_at=now + dt.timedelta(seconds=core.settings.lease))
        stored, created = await core.store.create_refund(
            refund, refundable=_paid(payment), source=source.value,
            detail={"amount": new.amount, "reason": new.reason, "origin": new.origin, "cause": new.cause})
        if not created:
            return self._same(stored, new), False
        core.metrics.refunds_total.labels(outcome="created").inc()
        log.info("refund.created", out_trade_no=payment.out_trade_no, out_refund_no=stored.out_refund_no,
                 amount=stored.amount, origin=stored.origin)
        submitted = await self.submit(stored, payment, source=source)
        if submitted.state is RefundState.CREATED:
            raise RefundDeferred(f"refund {stored.out_refund_no} is stored; WeChat could not be asked now and it is "
                                 "asked again shortly", refund=submitted)
        return submitted, True

    def _same(self, stored: models.Refund, new: NewRefund) -> models.Refund:
        asked = (new.out_trade_no, new.amount, new.reason)
        if (stored.out_trade_no, stored.amount, stored.reason) != asked:
            raise RefundConflict(f"out_refund_no {stored.out_refund_no} names a refund with other fields")
        return stored

    async def submit(self, refund: models.Refund, payment: models.Payment | None = None, *,
                     source: Source = Source.SWEEPER) -> models.Refund:
        """Ask WeChat for a `created` refund (the identical request every time); returns the refund as written."""
        core = self.core
        payment = payment or await core.load(refund.out_trade_no)
        request = RefundRequest(out_refund_no=refund.out_refund_no, out_trade_no=payment.out_trade_no,
                                transaction_id=payment.transaction_id, amount=refund.amount, total=_paid(payment),
                                notify_url=core.settings.notify_url, reason=refund.reason)
        with logs.bound(out_refund_no=refund.out_refund_no):
            try:
                answer = await self.wechat.refund(request)
            except errors.WechatFinal as exc:
                if exc.wechat_code in RETRY_LATER:
                    return await self._later(refund, "submit_failed", source, {"error": str(exc),
                                                                               "wechat_code": exc.wechat_code})
                log.error("alert.refund_refused", out_trade_no=refund.out_trade_no, wechat_code=exc.wechat_code,
                          error=str(exc))
                code = exc.wechat_code or f"HTTP_{exc.status}"
                try:
                    failed = await self._move(refund, RefundTrigger.FAIL, source, payload={"code": code},
                                              detail={"message": str(exc)},
                                              changes={"failure": code, "next_attempt_at": core.now() + dt.timedelta(
                                                  seconds=core.settings.lease)})
                except errors.StaleState:
                    return await self._load(refund.out_refund_no)  # moved meanwhile: what moved it knew more
                return await self._tell(failed, source)
            except (errors.WechatRetryable, errors.NotConfigured) as exc:
                log.info("refund.submit_failed", error=str(exc))
                return await self._later(refund, "submit_failed", source, {"error": str(exc)})
            return await self.apply_answer(refund, answer, source)

    # --- what WeChat says ---------------------------------------------------------------------

    async def apply_answer(self, refund: models.Refund, answer: RefundAnswer, source: Source, *,
                           notification: models.Notification | None = None) -> models.Refund:
        """Move the refund to what WeChat says (an answer, a query, a notification, a bill line); what it
        already says changes nothing but the next query. A moved refund's next step is scheduled with it.

        Another writer may have moved the refund since it was read (a notification overtaking the answer to
        the very request that made it): the news is then applied to the refund as that writer left it."""
        for _ in range(DECIDE_RETRIES):
            try:
                return await self._apply_answer(refund, answer, source, notification)
            except errors.StaleState:
                refund = await self._load(refund.out_refund_no)
        raise errors.StoreUnavailable(f"refund {refund.out_refund_no} kept changing; try again")

    async def _apply_answer(self, refund: models.Refund, answer: RefundAnswer, source: Source,
                            notification: models.Notification | None) -> models.Refund:
        core = self.core
        trigger = _STATUS_TRIGGER[answer.status]
        now = core.now()
        facts: dict[str, Any] = {"refund_id": answer.refund_id or refund.refund_id}
        if refund_states.TABLE.destination(refund.state, trigger) is None:
            # Nothing to move: the same news again, or news the refund is past (a late PROCESSING).
            if notification is not None and not await core.store.record_notification(
                    dataclasses.replace(notification, outcome="refund_known")):
                return refund
            if refund.state in (RefundState.PROCESSING, RefundState.ABNORMAL) and source is not Source.NOTIFY:
                return await self._next_query(refund)
            return refund
        payload: dict[str, Any] = {"refund_id": facts["refund_id"]}
        changes: dict[str, Any] = {}
        if facts["refund_id"]:
            changes["refund_id"] = facts["refund_id"]
        if trigger is RefundTrigger.SUCCEED:
            payload["amount"] = answer.amount
            # The forward below is this process's for a lease; if it dies first, the sweeper forwards it.
            changes |= {"succeeded_at": answer.success_time or now,
                        "next_attempt_at": now + dt.timedelta(seconds=core.settings.lease)}
        elif trigger is RefundTrigger.ACCEPT:
            changes["next_attempt_at"] = core.after(core.settings.refund_query_schedule[0])
        elif trigger is RefundTrigger.ABNORMAL:
            changes["next_attempt_at"] = core.after(REFUND_QUERY_AFTER)
        elif trigger is RefundTrigger.CLOSE:
            changes |= {"failure": "CLOSED", "next_attempt_at": now + dt.timedelta(seconds=core.settings.lease)}
        detail = {"status": answer.status, "success_time": _iso(answer.success_time)}
        try:
            moved = await self._move(refund, trigger, source, payload=payload, detail=detail, changes=changes,
                                     notification=notification)
        except errors.GuardRejected as exc:
            log.error("alert.refund_mismatch", out_refund_no=refund.out_refund_no, reason=exc.reason,
                      source=source.value)
            raise errors.WechatRetryable(f"WeChat's refund answer cannot be applied: {exc.reason}") from None
        if moved.state is RefundState.SUCCEEDED:
            moved = await self._tell(moved, source, await self.settle_payment(moved.out_trade_no))
        elif moved.state is RefundState.CLOSED:
            moved = await self._tell(moved, source)
        elif moved.state is RefundState.ABNORMAL:
            log.error("alert.refund_abnormal", out_trade_no=moved.out_trade_no, out_refund_no=moved.out_refund_no,
                      refund_id=moved.refund_id)
        return moved

    async def query(self, refund: models.Refund, *, source: Source = Source.SWEEPER) -> models.Refund:
        """Ask WeChat how a refund stands and apply it; a `created` one WeChat does not know is submitted."""
        try:
            answer = await self.wechat.query_refund(refund.out_refund_no)
        except (errors.WechatError, errors.NotConfigured) as exc:
            log.info("refund.query_failed", out_refund_no=refund.out_refund_no, error=str(exc))
            if source is Source.SWEEPER:
                return await self._next_query(refund)
            return refund
        if answer is None:
            if refund.state is RefundState.CREATED:
                return await self.submit(refund, source=source)
            log.error("alert.refund_unknown_at_wechat", out_refund_no=refund.out_refund_no, state=refund.state.value)
            return await self._next_query(refund) if source is Source.SWEEPER else refund
        if answer.out_trade_no not in (None, refund.out_trade_no):
            log.error("alert.query_mismatch", out_refund_no=refund.out_refund_no, out_trade_no=answer.out_trade_no)
            return await self._next_query(refund) if source is Source.SWEEPER else refund
        try:
            return await self.apply_answer(refund, answer, source)
        except errors.WechatRetryable:
            return await self._next_query(refund) if source is Source.SWEEPER else refund

    async def handle_notification(self, note: VerifiedNotification, row: models.Notification) -> str:
        """REFUND.SUCCESS / ABNORMAL / CLOSED, verified like a payment notification: the merchant, the refund,
        its payment and its amount must be ours. Returns the outcome once it is durable."""
        core = self.core
        resource = note.resource
        if resource.get("mchid") != core.settings.wechat_mchid:
            log.warning("notification.refused", reason="merchant_mismatch", mchid=resource.get("mchid"))
            raise MalformedNotification("mchid does not belong to this merchant")
        try:
            answer = parse_refund(resource)
        except errors.WechatRetryable as exc:
            raise MalformedNotification(f"refund notification: {exc}") from None
        out_trade_no = resource.get("out_trade_no")
        kept = dataclasses.replace(row, out_trade_no=out_trade_no if isinstance(out_trade_no, str) else None)
        if await core.store.get_notification(kept.notification_id) is not None:
            return "duplicate"
        refund = await core.store.get_refund(answer.out_refund_no)
        if refund is None:
            if not await core.store.record_notification(dataclasses.replace(kept, outcome="refund_unknown")):
                return "duplicate"
            # Made outside payflow (the merchant platform): reconciliation reports it from the bill, too.
            log.error("alert.refund_unknown", out_trade_no=kept.out_trade_no, out_refund_no=answer.out_refund_no,
                      refund_status=answer.status, amount=answer.amount)
            return "refund_unknown"
        wrong = [name for name, ours, theirs in (("out_trade_no", refund.out_trade_no, answer.out_trade_no),
                                                 ("amount", refund.amount, answer.amount))
                 if theirs != ours]
        if wrong:
            if not await core.store.record_notification(dataclasses.replace(kept, outcome="refund_mismatch")):
                return "duplicate"
            log.error("alert.refund_mismatch", out_refund_no=refund.out_refund_no, fields=wrong,
                      out_trade_no=answer.out_trade_no, amount=answer.amount)
            return "refund_mismatch"
        outcome = f"refund_{answer.status.lower()}"
        with logs.bound(out_refund_no=refund.out_refund_no):
            await self.apply_answer(refund, answer, Source.NOTIFY,
                                    notification=dataclasses.replace(kept, outcome=outcome))
        return outcome

    # --- telling the backend ------------------------------------------------------------------

    async def forward(self, refund: models.Refund, payment: models.Payment | None = None) -> models.Refund:
        """One attempt of `refund.succeeded` (a succeeded refund) or `refund.failed` (a closed or failed one);
        `payment`, when the caller has just read it, spares a read."""
        core = self.core
        payment = payment or await core.load(refund.out_trade_no)
        if payment.state is State.NOTIFIED:
            # The backend hears of the payment before it hears of its refund.
            return await self._reschedule(refund, core.after(core.settings.forward_schedule[0]), refund.attempts)
        event_id, body = refund_event_body(payment, refund)
        tried = await outbox.attempt(core, self.backend, "refund.succeeded" if refund.state is RefundState.SUCCEEDED
                                     else "refund.failed", event_id, body, refund.attempts,
                                     out_refund_no=refund.out_refund_no)
        if tried.verdict == "retry":
            return await self._reschedule(refund, tried.next_at, tried.failures,
                                          note=Note("forward_failed", Source.BACKEND, tried.detail))
        if tried.verdict == "acked" and refund.state is RefundState.SUCCEEDED:
            try:
                synced = await self._move(refund, RefundTrigger.SYNC, Source.BACKEND, detail=tried.detail)
            except errors.StaleState:
                return await self._load(refund.out_refund_no)
            core.metrics.refunds_total.labels(outcome="synced").inc()
            return synced
        # Told (a failed refund), or never to be told (rejected, exhausted): nothing more is scheduled.
        return await self._reschedule(refund, None, tried.failures,
                                      note=Note(f"event_{tried.verdict}", Source.BACKEND, tried.detail))

    async def _tell(self, refund: models.Refund, source: Source,
                    payment: models.Payment | None = None) -> models.Refund:
        """Forward a refund that just reached an outcome: in the background when WeChat, a caller or a reader
        waits for this answer (the refund's lease keeps the sweeper off it meanwhile), else now."""
        if source in (Source.NOTIFY, Source.API, Source.ADMIN, Source.QUERY):
            self.core.spawn(self._forward_quietly(refund, payment), name="refund-forward")
            return refund
        return await self.forward(refund, payment)

    async def _forward_quietly(self, refund: models.Refund, payment: models.Payment | None) -> None:
        try:
            await self.forward(refund, payment)
        except errors.PayflowError as exc:  # the lease runs out and a sweeper forwards it
            log.warning("refund.forward_left_to_sweeper", out_refund_no=refund.out_refund_no, error=str(exc))

    # --- the payment's side -------------------------------------------------------------------

    async def settle_payment(self, out_trade_no: str) -> models.Payment:
        """A payment whose succeeded refunds reach what it paid becomes `refunded` (from synced, reconciled or
        needs_review; a `notified` one once it is synced)."""
        core = self.core
        payment = await core.load(out_trade_no)
        if payment.state not in states.TABLE.sources(Trigger.REFUND):
            return payment
        refunded = sum(r.amount for r in await core.store.refunds_of(out_trade_no)
                       if r.state in refund_states.REFUNDED)
        if refunded < _paid(payment):
            return payment
        log.info("payment.refunded", out_trade_no=out_trade_no, refunded=refunded)
        return await core.apply(payment, Trigger.REFUND, source=Source.SWEEPER, payload={"refunded": refunded})

    async def refunded_amount(self, out_trade_no: str) -> int:
        return sum(r.amount for r in await self.core.store.refunds_of(out_trade_no)
                   if r.state in refund_states.REFUNDED)

    # --- refunds nobody asked for by hand ----------------------------------------------------

    async def admin_refund(self, out_trade_no: str, *, note: str, amount: int | None = None) -> models.Refund:
        """An operator refunds a payment parked for review: all that is left to refund unless `amount` says less."""
        core = self.core
        if not isinstance(note, str) or not note.strip():
            raise errors.InvalidRequest("note is required", field="note")
        payment = await core.load(out_trade_no)
        if payment.state is not State.NEEDS_REVIEW:
            raise NotRefundable(payment, why="an operator refunds a payment in needs_review; the API refunds others")
        existing = await core.store.refunds_of(out_trade_no)
        left = _paid(payment) - sum(r.amount for r in existing if r.state in refund_states.COUNTED)
        refund, _ = await self._create_quietly(NewRefund(
            out_trade_no, amount if amount is not None else left,
            out_refund_no=f"admin-{out_trade_no}-{len(existing) + 1}", origin="admin", cause=note.strip()),
            source=Source.ADMIN)
        await core.store.record_event(payment, "refund_requested", source=Source.ADMIN.value, at=core.now(),
                                      detail={"note": note.strip(), "out_refund_no": refund.out_refund_no,
                                              "amount": refund.amount})
        return refund

    def flagged(self, payment: models.Payment, reason: str) -> None:
        """A payment was parked for `reason`: refund it in the background if PAYFLOW_AUTO_REFUND names the reason
        (if this process dies first, the sweeper's `auto_refunds` pass does it)."""
        if reason in self.core.settings.auto_refund:
            self.core.spawn(self._auto_quietly(payment.out_trade_no), name="auto-refund")

    async def _auto_quietly(self, out_trade_no: str) -> None:
        try:
            await self.auto_refund(await self.core.load(out_trade_no))
        except errors.PayflowError as exc:
            log.warning("refund.auto_left_to_sweeper", out_trade_no=out_trade_no, error=str(exc))

    async def auto_refund(self, payment: models.Payment) -> models.Refund | None:
        """Refund a `needs_review` payment whose review reason PAYFLOW_AUTO_REFUND names, once (its out_refund_no
        is `auto-{out_trade_no}`, so every replica and every retry asks for the same refund)."""
        core = self.core
        if payment.state is not State.NEEDS_REVIEW or payment.transaction_id is None or not core.settings.auto_refund:
            return None
        out_refund_no = f"auto-{payment.out_trade_no}"
        if await core.store.get_refund(out_refund_no) is not None:
            return None
        reason = _review_reason(await core.store.events(payment.out_trade_no))
        if reason not in core.settings.auto_refund:
            return None
        counted = sum(r.amount for r in await core.store.refunds_of(payment.out_trade_no)
                      if r.state in refund_states.COUNTED)
        if counted >= _paid(payment):
            return None
        log.info("refund.auto", out_trade_no=payment.out_trade_no, reason=reason)
        refund, _ = await self._create_quietly(NewRefund(payment.out_trade_no, _paid(payment) - counted,
                                                         out_refund_no=out_refund_no, origin="auto", cause=reason),
                                               source=Source.SWEEPER)
        return refund

    async def auto_refunds(self) -> int:
        """The sweeper's re-drive of automatic refunds: every `needs_review` payment whose reason is named and that
        has no automatic refund yet gets one. Costs a read of each parked payment."""
        if not self.core.settings.auto_refund:
            return 0
        made, after = 0, None
        while True:
            page = await self.core.store.list_payments(state=State.NEEDS_REVIEW, after=after, limit=200)
            for payment in page:
                try:
                    made += await self.auto_refund(payment) is not None
                except errors.PayflowError as exc:
                    log.warning("refund.auto_failed", out_trade_no=payment.out_trade_no, error=str(exc))
            if len(page) < 200:
                return made
            after = page[-1].out_trade_no

    async def _create_quietly(self, new: NewRefund, *, source: Source) -> tuple[models.Refund, bool]:
        """`create_refund` for callers that need no 503: a deferred refund is stored and re-driven all the same."""
        try:
            return await self.create_refund(new, source=source)
        except RefundDeferred as exc:
            return exc.refund, True

    # --- the sweeper and reads ----------------------------------------------------------------

    async def sweep(self, refund: models.Refund) -> str:
        """Re-drive one claimed refund by its state; returns what happened (for the pass report)."""
        with logs.bound(out_refund_no=refund.out_refund_no, refund_state=refund.state.value):
            if refund.state is RefundState.CREATED:
                moved = await self.submit(refund)
                return f"refund_submit:{moved.state.value}"
            if refund.state in (RefundState.PROCESSING, RefundState.ABNORMAL):
                moved = await self.query(refund)
                return f"refund_query:{moved.state.value}"
            if refund.state is RefundState.SUCCEEDED:
                moved = await self.forward(refund, await self.settle_payment(refund.out_trade_no))
                return f"refund_forward:{moved.state.value}"
            if refund.state in refund_states.UNREFUNDED:
                await self.forward(refund)
                return f"refund_forward:{refund.state.value}"
            await self._reschedule(refund, None, refund.attempts)
            return "nothing"

    async def view_refund(self, out_refund_no: str) -> models.Refund:
        """The refund as a reader should see it: asks WeChat while it is processing, at most once per refund per
        `read_query_interval`; a WeChat failure leaves the stored refund."""
        core = self.core
        refund = await self._load(out_refund_no)
        interval = core.settings.read_query_interval
        if refund.state is not RefundState.PROCESSING or interval <= 0:
            return refund
        now = core.now()
        asked = self._read_queries.get(out_refund_no)
        if asked is not None and 0 <= (now - asked).total_seconds() < interval:
            return refund
        self._read_queries[out_refund_no] = now
        self._read_queries.move_to_end(out_refund_no)
        if len(self._read_queries) > READ_QUERIES_KEPT:
            self._read_queries.popitem(last=False)
        with ratelimit.priority(Priority.READ):
            try:
                return await self.query(refund, source=Source.QUERY)
            except errors.PayflowError as exc:
                log.info("refund.read_query_failed", out_refund_no=out_refund_no, error=str(exc))
                return await self._load(out_refund_no)

    async def refunds_of(self, out_trade_no: str) -> list[models.Refund]:
        await self.core.load(out_trade_no)
        return await self.core.store.refunds_of(out_trade_no)

    # --- helpers ------------------------------------------------------------------------------

    async def _load(self, out_refund_no: str) -> models.Refund:
        refund = await self.core.store.get_refund(out_refund_no)
        if refund is None:
            raise errors.NotFound(f"no refund with out_refund_no {out_refund_no!r}")
        return refund

    async def _move(self, refund: models.Refund, trigger: RefundTrigger, source: Source, *,
                    payload: Mapping[str, Any] | None = None, detail: Mapping[str, Any] | None = None,
                    changes: Mapping[str, Any] | None = None,
                    notification: models.Notification | None = None) -> models.Refund:
        """Plan `trigger` on the refund as read (guards included) and write it with CAS and its event."""
        core = self.core
        to = refund_states.TABLE.plan(refund, trigger, **dict(payload or {}))
        moved = await core.store.transition_refund(
            refund, to, trigger, source=source.value, at=core.now(), detail={**(payload or {}), **(detail or {})},
            changes=changes, notification=notification)
        core.metrics.refunds_total.labels(outcome=to.value).inc()
        log.info("refund.transitioned", out_refund_no=refund.out_refund_no, trigger=trigger.value,
                 from_state=refund.state.value, state=to.value, source=source.value)
        return moved

    async def _reschedule(self, refund: models.Refund, at: dt.datetime | None, attempts: int, *,
                          note: Note | None = None) -> models.Refund:
        try:
            return await self.core.store.reschedule_refund(refund, next_attempt_at=at, attempts=attempts,
                                                           at=self.core.now(), note=note)
        except errors.StaleState:
            return await self._load(refund.out_refund_no)

    async def _later(self, refund: models.Refund, trigger: str, source: Source,
                     detail: dict[str, Any]) -> models.Refund:
        """A submission that did not reach a verdict: the next one along the refund query schedule."""
        schedule = self.core.settings.refund_query_schedule
        delay = schedule[min(refund.attempts, len(schedule) - 1)]
        return await self._reschedule(refund, self.core.after(delay), refund.attempts + 1,
                                      note=Note(trigger, source.value, {**detail, "attempt": refund.attempts + 1}))

    async def _next_query(self, refund: models.Refund) -> models.Refund:
        """The next query of a processing (schedule, then every 6h) or abnormal (every 6h) refund."""
        schedule = self.core.settings.refund_query_schedule
        step = refund.attempts + 1
        if refund.state is RefundState.ABNORMAL or step >= len(schedule):
            delay = REFUND_QUERY_AFTER
        else:
            delay = schedule[step]
        return await self._reschedule(refund, self.core.after(delay), step)


def _review_reason(events: list[models.Event]) -> str | None:
    """Why the payment is in review: the reason of the flag that parked it last."""
    for event in reversed(events):
        if event.trigger == Trigger.FLAG.value:
            reason = event.detail.get("reason")
            return reason if isinstance(reason, str) else None
    return None


def _check(new: NewRefund) -> None:
    if isinstance(new.amount, bool) or not isinstance(new.amount, int) or new.amount < 1:
        raise errors.InvalidRequest("amount must be an integer number of fen, at least 1", field="amount")
    if new.out_refund_no is not None and not OUT_REFUND_NO.match(new.out_refund_no):
        raise errors.InvalidRequest("out_refund_no must be 1 to 64 of 0-9 A-Z a-z _ - | * @", field="out_refund_no")
    if new.reason is not None and (not new.reason.strip() or len(new.reason) > REASON_MAX):
        raise errors.InvalidRequest(f"reason must be 1 to {REASON_MAX} characters", field="reason")


def _paid(payment: models.Payment) -> int:
    return payment.paid_amount if payment.paid_amount is not None else payment.amount


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
