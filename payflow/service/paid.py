"""WeChat says SUCCESS: from a notification, a query (sweeper, on read, operator), or later the bill; and
what a query's other final answers (CLOSED, REFUND) do to an unpaid payment."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping

from payflow import errors, logs, models, tokens
from payflow.service.core import STDLIB_LOG, Core
from payflow.service.forwarding import Forwarding
from payflow.service.refunding import Refunding
from payflow.states import Source, State, Trigger
from payflow.store import Step
from payflow.wechat.api import Transaction
from payflow.wechat.notify import (
    TRANSACTION_SUCCESS,
    MalformedNotification,
    NotificationRejected,
    VerifiedNotification,
    Verifier,
)

log = logs.get_logger("payflow.service")

# What a query can say that settles an unpaid payment's fate (`Paid.settle`).
FINAL_TRADE_STATES = frozenset({"SUCCESS", "CLOSED", "REFUND"})
REFUND_EVENTS = "REFUND."  # REFUND.SUCCESS, REFUND.ABNORMAL, REFUND.CLOSED
# notification outcomes → the labels of payflow_notifications
_OUTCOME_METRIC = {"already_paid": "duplicate", "amount_mismatch": "mismatch", "appid_mismatch": "mismatch",
                   "unknown_payment": "unknown", "refund_mismatch": "mismatch", "refund_unknown": "unknown",
                   "refund_known": "duplicate"}


class Paid:
    def __init__(self, core: Core, verifier: Verifier, forwarding: Forwarding, refunding: Refunding) -> None:
        self.core = core
        self.verifier = verifier
        self.forwarding = forwarding
        self.refunding = refunding

    async def handle_notification(self, headers: Mapping[str, str], raw: bytes) -> str:
        """Verify, decrypt, check and apply one notification; returns its outcome.

        Returns normally only when the outcome is durable (the 2xx may be sent); raises
        `NotificationRejected`, `StoreUnavailable` or `NotConfigured` so that WeChat delivers again.
        """
        metrics = self.core.metrics
        try:
            note = self.verifier.verify(headers, raw)
        except NotificationRejected as exc:
            metrics.count_notification(exc.code)
            log.info("notification.refused", reason=exc.code, error=str(exc))
            raise
        with self.forwarding.handling_notification(), logs.bound(notification_id=note.notification_id):
            outcome = await self._handle_verified(note)
            metrics.count_notification(_OUTCOME_METRIC.get(outcome, outcome))
            return outcome

    async def _handle_verified(self, note: VerifiedNotification) -> str:
        txn = note.transaction
        core = self.core
        row = models.Notification(note.notification_id, core.now(), note.event_type,
                                  txn.out_trade_no if txn else None, "", note.resource, note.resource_json)
        if note.event_type.startswith(REFUND_EVENTS):
            try:
                return await self.refunding.handle_notification(note, row)
            except MalformedNotification:
                core.metrics.count_notification("mismatch")
                raise
        if note.event_type != TRANSACTION_SUCCESS or txn is None or txn.trade_state != "SUCCESS":
            if not await core.store.record_notification(dataclasses.replace(row, outcome="ignored")):
                return "duplicate"
            log.info("notification.ignored", event_type=note.event_type)
            return "ignored"
        if txn.mchid != core.settings.wechat_mchid or txn.appid not in core.settings.merchant_appids:
            log.warning("notification.refused", reason="merchant_mismatch", mchid=txn.mchid, appid=txn.appid)
            core.metrics.count_notification("mismatch")
            raise MalformedNotification("mchid/appid do not belong to this merchant")
        outcome = await self.confirm_paid(txn, Source.NOTIFY, notification=row)
        if STDLIB_LOG.isEnabledFor(logging.INFO):  # thousands a second: skip building a dropped event
            log.info("notification.handled", out_trade_no=txn.out_trade_no, outcome=outcome)
        return outcome

    async def confirm_paid(
        self,
        txn: Transaction,
        source: Source,
        *,
        notification: models.Notification | None = None,
    ) -> str:
        """Apply "WeChat says SUCCESS" to the payment; returns the outcome.

        Never moves a payment backwards; a wrong amount or a payment after close goes to needs_review.
        `notification` (a notification row) commits together with whatever the news caused, and is
        deduplicated by its id: a notification already recorded returns "duplicate" and changes nothing.
        After `pay`, this process queues the forward (see `Forwarding`), holding a lease so no other worker
        forwards the same payment meanwhile; if it dies, the lease runs out and a sweeper takes over.
        """
        core = self.core
        now = core.now()
        facts = {"transaction_id": txn.transaction_id, "paid_amount": txn.amount, "paid_at": txn.success_time or now}
        detail = {"payer_total": txn.payer_total, "success_time": _iso(txn.success_time)}
        lease = tokens.lease_token()

        def decide(payment: models.Payment | None) -> Step:
            if payment is None:
                return Step("unknown_payment")
            if txn.appid is not None and txn.appid != (payment.appid or core.settings.wechat_appid):
                return Step("appid_mismatch")  # another of the merchant's apps: not news about this payment
            if payment.state in (State.CREATED, State.PREPAID):
                if txn.amount != payment.amount:
                    return core.step(payment, Trigger.FLAG, "amount_mismatch", source=source,
                                      payload={"reason": "amount_mismatch"}, changes=facts,
                                      detail={**detail, "paid_amount": txn.amount, "expected_amount": payment.amount})
                return core.step(payment, Trigger.PAY, "accepted", source=source,
                                  payload={"amount": txn.amount, "transaction_id": txn.transaction_id}, detail=detail,
                                  changes={**facts, "next_attempt_at": now + dt.timedelta(seconds=core.settings.lease)},
                                  lease_token=lease)
            if payment.state is State.CLOSED:
                return core.step(payment, Trigger.FLAG, "paid_after_close", source=source,
                                  payload={"reason": "paid_after_close"}, detail={**detail, "paid_amount": txn.amount},
                                  changes=facts)
            # notified / synced / reconciled / needs_review: a late or repeated SUCCESS changes nothing.
            return Step("in_review" if payment.state is State.NEEDS_REVIEW else "already_paid")

        try:
            decided = await core.store.decide(txn.out_trade_no, decide, at=now, notification=notification)
        except errors.GuardRejected as exc:
            # e.g. a SUCCESS without transaction_id: not something to mark paid on
            log.warning("payment.success_refused", out_trade_no=txn.out_trade_no, reason=exc.reason)
            raise errors.WechatRetryable(f"WeChat's SUCCESS cannot be applied: {exc.reason}") from None
        step = decided.step
        if step is None:
            log.info("notification.duplicate", out_trade_no=txn.out_trade_no)
            return "duplicate"
        core.count(step, decided.before)
        outcome = step.outcome
        if outcome == "accepted":
            assert decided.after is not None
            self.forwarding.forward_soon(decided.after)
        elif outcome == "unknown_payment":
            log.error("alert.unknown_payment", out_trade_no=txn.out_trade_no, source=source.value,
                      transaction_id=txn.transaction_id, amount=txn.amount)
        elif outcome == "appid_mismatch":
            assert decided.before is not None
            log.error("alert.appid_mismatch", out_trade_no=txn.out_trade_no, appid=txn.appid,
                      expected_appid=decided.before.appid or core.settings.wechat_appid, source=source.value)
        elif outcome == "amount_mismatch":
            assert decided.before is not None
            log.error("alert.amount_mismatch", out_trade_no=txn.out_trade_no, paid_amount=txn.amount,
                      expected_amount=decided.before.amount, source=source.value)
        elif outcome == "paid_after_close":
            log.error("alert.paid_after_close", out_trade_no=txn.out_trade_no, source=source.value,
                      transaction_id=txn.transaction_id)
        return outcome

    async def settle(self, payment: models.Payment, txn: Transaction) -> str:
        """Apply a query's final answer (SUCCESS, CLOSED or REFUND) to the payment; returns the outcome."""
        if txn.trade_state == "SUCCESS":
            return await self.confirm_paid(txn, Source.QUERY)
        core = self.core
        if txn.trade_state == "CLOSED":
            moved = await core.apply(payment, Trigger.CLOSE, source=Source.QUERY, detail={"reason": "closed_at_wechat"})
            return f"closed:{moved.state.value}"
        if txn.trade_state == "REFUND":
            log.error("alert.refund_seen", transaction_id=txn.transaction_id)
            moved = await core.apply(payment, Trigger.FLAG, source=Source.QUERY, payload={"reason": "refund_seen"},
                                     detail={"transaction_id": txn.transaction_id})
            return f"refund:{moved.state.value}"
        raise ValueError(f"{txn.trade_state} is not a final trade state")


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
