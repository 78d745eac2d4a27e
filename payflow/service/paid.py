"""WeChat says SUCCESS: from a notification, a query (sweeper or on read), or later the bill."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping

from payflow import errors, logs, models, tokens
from payflow.service.core import STDLIB_LOG, ServiceCore
from payflow.states import Source, State, Trigger
from payflow.store import Step
from payflow.wechat.api import Transaction
from payflow.wechat.notify import (
    TRANSACTION_SUCCESS,
    MalformedNotification,
    NotificationRejected,
    VerifiedNotification,
)

log = logs.get_logger("payflow.service")

_READ_CACHE_LIMIT = 10_000  # query-on-read bookkeeping entries kept before old ones are dropped
# notification outcomes → the labels of payflow_notifications
_OUTCOME_METRIC = {"already_paid": "duplicate", "amount_mismatch": "mismatch", "unknown_payment": "unknown"}


class Paid(ServiceCore):
    async def handle_notification(self, headers: Mapping[str, str], raw: bytes) -> str:
        """Verify, decrypt, check and apply one notification; returns its outcome.

        Returns normally only when the outcome is durable (the 2xx may be sent); raises
        `NotificationRejected` or `StoreUnavailable` so that WeChat delivers again.
        """
        if self.verifier is None:
            raise errors.StoreUnavailable("notifications cannot be verified: WeChat keys are not configured")
        try:
            note = self.verifier.verify(headers, raw)
        except NotificationRejected as exc:
            self.metrics.count_notification(exc.code)
            log.info("notification.refused", reason=exc.code, error=str(exc))
            raise
        in_flight = self.handling_notification()  # type: ignore[attr-defined]
        with in_flight, logs.bound(notification_id=note.notification_id):
            outcome = await self._handle_verified(note)
            self.metrics.count_notification(_OUTCOME_METRIC.get(outcome, outcome))
            return outcome

    async def _handle_verified(self, note: VerifiedNotification) -> str:
        txn = note.transaction
        row = models.Notification(note.notification_id, self.now(), note.event_type,
                                  txn.out_trade_no if txn else None, "", note.resource, note.resource_json)
        if note.event_type != TRANSACTION_SUCCESS or txn is None or txn.trade_state != "SUCCESS":
            if not await self.store.record_notification(dataclasses.replace(row, outcome="ignored")):
                return "duplicate"
            log.info("notification.ignored", event_type=note.event_type)
            return "ignored"
        if txn.mchid != self.settings.wechat_mchid or txn.appid != self.settings.wechat_appid:
            log.warning("notification.refused", reason="merchant_mismatch", mchid=txn.mchid, appid=txn.appid)
            self.metrics.count_notification("mismatch")
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
        now = self.now()
        facts = {"transaction_id": txn.transaction_id, "paid_amount": txn.amount, "paid_at": txn.success_time or now}
        detail = {"payer_total": txn.payer_total, "success_time": _iso(txn.success_time)}
        lease = tokens.lease_token()

        def decide(payment: models.Payment | None) -> Step:
            if payment is None:
                return Step("unknown_payment")
            if payment.state in (State.CREATED, State.PREPAID):
                if txn.amount != payment.amount:
                    return self._step(payment, Trigger.FLAG, "amount_mismatch", source=source,
                                      payload={"reason": "amount_mismatch"}, changes=facts,
                                      detail={**detail, "paid_amount": txn.amount, "expected_amount": payment.amount})
                return self._step(payment, Trigger.PAY, "accepted", source=source,
                                  payload={"amount": txn.amount, "transaction_id": txn.transaction_id}, detail=detail,
                                  changes={**facts, "next_attempt_at": now + dt.timedelta(seconds=self.settings.lease)},
                                  lease_token=lease)
            if payment.state is State.CLOSED:
                return self._step(payment, Trigger.FLAG, "paid_after_close", source=source,
                                  payload={"reason": "paid_after_close"}, detail={**detail, "paid_amount": txn.amount},
                                  changes=facts)
            # notified / synced / reconciled / needs_review: a late or repeated SUCCESS changes nothing.
            return Step("in_review" if payment.state is State.NEEDS_REVIEW else "already_paid")

        try:
            decided = await self.store.decide(txn.out_trade_no, decide, at=now, notification=notification)
        except errors.GuardRejected as exc:
            # e.g. a SUCCESS without transaction_id: not something to mark paid on
            log.warning("payment.success_refused", out_trade_no=txn.out_trade_no, reason=exc.reason)
            raise errors.WechatRetryable(f"WeChat's SUCCESS cannot be applied: {exc.reason}") from None
        step = decided.step
        if step is None:
            log.info("notification.duplicate", out_trade_no=txn.out_trade_no)
            return "duplicate"
        self._count(step, decided.before)
        outcome = step.outcome
        if outcome == "accepted":
            assert decided.after is not None
            self.forward_soon(decided.after)  # type: ignore[attr-defined]
        elif outcome == "unknown_payment":
            log.error("alert.unknown_payment", out_trade_no=txn.out_trade_no, source=source.value,
                      transaction_id=txn.transaction_id, amount=txn.amount)
        elif outcome == "amount_mismatch":
            assert decided.before is not None
            log.error("alert.amount_mismatch", out_trade_no=txn.out_trade_no, paid_amount=txn.amount,
                      expected_amount=decided.before.amount, source=source.value)
        elif outcome == "paid_after_close":
            log.error("alert.paid_after_close", out_trade_no=txn.out_trade_no, source=source.value,
                      transaction_id=txn.transaction_id)
        return outcome

    async def view_payment(self, out_trade_no: str) -> models.Payment:
        """The payment as a payer's status poll should see it: asks WeChat while it is still `prepaid`.

        At most one query per payment per `read_query_interval`; concurrent readers share it. A WeChat
        failure is not the reader's problem: they get the stored state.
        """
        payment = await self.get_payment(out_trade_no)
        if payment.state is not State.PREPAID or self.wechat is None or self.settings.read_query_interval <= 0:
            return payment
        now = self.now()
        entry = self._read_queries.get(out_trade_no)
        fresh_enough = entry is not None and (now - entry[0]).total_seconds() < self.settings.read_query_interval
        if entry is None or not fresh_enough and entry[1].done():
            task = asyncio.get_running_loop().create_task(self._query_on_read(out_trade_no),
                                                          name=f"read-query-{out_trade_no}")
            if len(self._read_queries) >= _READ_CACHE_LIMIT:
                self._prune_read_queries(now)
            self._read_queries[out_trade_no] = (now, task)
            entry = self._read_queries[out_trade_no]
        await asyncio.shield(entry[1])
        return await self.get_payment(out_trade_no)

    async def _query_on_read(self, out_trade_no: str) -> None:
        assert self.wechat is not None
        try:
            txn = await self.wechat.query(out_trade_no)
            if txn is not None and txn.trade_state == "SUCCESS":
                with logs.bound(out_trade_no=out_trade_no):
                    await self.confirm_paid(txn, Source.QUERY)
        except errors.PayflowError as exc:
            log.info("payment.read_query_failed", out_trade_no=out_trade_no, error=str(exc))

    def _prune_read_queries(self, now: dt.datetime) -> None:
        horizon = self.settings.read_query_interval
        for key, (at, task) in list(self._read_queries.items()):
            if task.done() and (now - at).total_seconds() >= horizon:
                del self._read_queries[key]


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
