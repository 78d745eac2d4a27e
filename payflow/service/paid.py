"""WeChat says SUCCESS: from a notification, a query (sweeper or on read), or later the bill."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from collections.abc import Callable, Mapping

from payflow import errors, logs, models
from payflow.service.core import STALE_RETRIES, ServiceCore
from payflow.states import Source, State, Trigger
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
            self.metrics.notifications.labels(outcome=exc.code).inc()
            log.info("notification.refused", reason=exc.code, error=str(exc))
            raise
        with logs.bound(notification_id=note.notification_id):
            outcome = await self._handle_verified(note)
            self.metrics.notifications.labels(outcome=_OUTCOME_METRIC.get(outcome, outcome)).inc()
            return outcome

    async def _handle_verified(self, note: VerifiedNotification) -> str:
        with logs.bound(notification_id=note.notification_id):
            if await self.store.get_notification(note.notification_id) is not None:
                log.info("notification.duplicate")
                return "duplicate"
            received = self.now()
            txn = note.transaction

            def record(outcome: str) -> models.Notification:
                return models.Notification(note.notification_id, received, note.event_type,
                                           txn.out_trade_no if txn else None, outcome, note.resource)

            if note.event_type != TRANSACTION_SUCCESS or txn is None or txn.trade_state != "SUCCESS":
                await self.store.record_notification(record("ignored"))
                log.info("notification.ignored", event_type=note.event_type)
                return "ignored"
            if txn.mchid != self.settings.wechat_mchid or txn.appid != self.settings.wechat_appid:
                log.warning("notification.refused", reason="merchant_mismatch", mchid=txn.mchid, appid=txn.appid)
                self.metrics.notifications.labels(outcome="mismatch").inc()
                raise MalformedNotification("mchid/appid do not belong to this merchant")
            with logs.bound(out_trade_no=txn.out_trade_no):
                outcome = await self.confirm_paid(txn, Source.NOTIFY, record=record)
                log.info("notification.handled", outcome=outcome)
                return outcome

    async def confirm_paid(
        self,
        txn: Transaction,
        source: Source,
        *,
        record: Callable[[str], models.Notification] | None = None,
    ) -> str:
        """Apply "WeChat says SUCCESS" to the payment; returns the outcome.

        Never moves a payment backwards; a wrong amount or a payment after close goes to needs_review.
        `record` builds the notification row, which commits together with the transition it caused.
        After `pay`, this process forwards at once in the background, holding a lease so no other
        worker forwards the same payment meanwhile; if it dies, the lease runs out and a sweeper takes over.
        """
        for _ in range(STALE_RETRIES):
            payment = await self.store.get(txn.out_trade_no)
            if payment is None:
                if record is not None:
                    await self.store.record_notification(record("unknown_payment"))
                log.error("alert.unknown_payment", out_trade_no=txn.out_trade_no, source=source.value,
                          transaction_id=txn.transaction_id, amount=txn.amount)
                return "unknown_payment"
            facts = {"transaction_id": txn.transaction_id, "paid_amount": txn.amount,
                     "paid_at": txn.success_time or self.now()}
            detail = {"payer_total": txn.payer_total, "success_time": _iso(txn.success_time)}
            try:
                if payment.state in (State.CREATED, State.PREPAID):
                    if txn.amount != payment.amount:
                        await self._transition(
                            payment, Trigger.FLAG, source=source, payload={"reason": "amount_mismatch"},
                            detail={**detail, "paid_amount": txn.amount, "expected_amount": payment.amount},
                            changes=facts, notification=record("amount_mismatch") if record else None)
                        log.error("alert.amount_mismatch", out_trade_no=payment.out_trade_no,
                                  paid_amount=txn.amount, expected_amount=payment.amount, source=source.value)
                        return "amount_mismatch"
                    lease = secrets.token_hex(8)
                    paid = await self._transition(
                        payment, Trigger.PAY, source=source,
                        payload={"amount": txn.amount, "transaction_id": txn.transaction_id}, detail=detail,
                        changes={**facts, "next_attempt_at": self.now() + dt.timedelta(seconds=self.settings.lease)},
                        notification=record("accepted") if record else None, lease_token=lease)
                    self.spawn(self.forward(paid), name=f"forward-{paid.out_trade_no}")
                    return "accepted"
                if payment.state is State.CLOSED:
                    await self._transition(
                        payment, Trigger.FLAG, source=source, payload={"reason": "paid_after_close"},
                        detail={**detail, "paid_amount": txn.amount}, changes=facts,
                        notification=record("paid_after_close") if record else None)
                    log.error("alert.paid_after_close", out_trade_no=payment.out_trade_no, source=source.value,
                              transaction_id=txn.transaction_id)
                    return "paid_after_close"
            except errors.StaleState:
                continue  # someone moved it meanwhile; look again
            except errors.GuardRejected as exc:
                # e.g. a SUCCESS without transaction_id: not something to mark paid on
                log.warning("payment.success_refused", out_trade_no=payment.out_trade_no, reason=exc.reason)
                raise errors.WechatRetryable(f"WeChat's SUCCESS cannot be applied: {exc.reason}") from None
            # notified / synced / reconciled / needs_review: a late or repeated SUCCESS changes nothing.
            outcome = "in_review" if payment.state is State.NEEDS_REVIEW else "already_paid"
            if record is not None:
                await self.store.record_notification(record(outcome))
            return outcome
        raise errors.StoreUnavailable(f"payment {txn.out_trade_no} kept changing; try again")

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
