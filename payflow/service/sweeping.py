"""What the sweeper does with one due payment, and closing: by expiry or because the payer gave up."""

from __future__ import annotations

import datetime as dt

from payflow import errors, logs, models
from payflow.service.core import ServiceCore
from payflow.states import Source, State, Trigger
from payflow.wechat.api import Transaction
from payflow.wechat.client import ORDER_PAID

log = logs.get_logger("payflow.service")

ORDER_CLOSED = frozenset({"ORDER_CLOSED", "ORDERCLOSED"})


class Sweeping(ServiceCore):
    async def sweep(self, payment: models.Payment) -> str:
        """Re-drive one claimed payment by its state; returns what happened (for the pass report)."""
        with logs.bound(out_trade_no=payment.out_trade_no, state=payment.state.value):
            if payment.state is State.NOTIFIED:
                moved = await self.forward(payment)  # type: ignore[attr-defined]
                return f"forward:{moved.state.value}"
            if payment.state in (State.CREATED, State.PREPAID):
                return await self._sweep_unpaid(payment)
            # Nothing is scheduled for other states; a stray schedule is cleared.
            await self._reschedule(payment, None, payment.attempts)
            return "nothing"

    async def _sweep_unpaid(self, payment: models.Payment) -> str:
        if self.wechat is None:
            await self._reschedule(payment, self.after(self.settings.query_schedule[-1]), payment.attempts + 1)
            return "no_wechat"
        try:
            txn = await self.wechat.query(payment.out_trade_no)
        except errors.WechatError as exc:
            log.info("sweep.query_failed", error=str(exc), wechat_code=exc.wechat_code)
            await self._reschedule(payment, self._next_query(payment), payment.attempts + 1)
            return "query_failed"
        if txn is not None and txn.trade_state in ("SUCCESS", "CLOSED", "REFUND"):
            return await self._apply_final_state(payment, txn)
        if payment.state is State.CREATED:
            return await self._sweep_created(payment, txn)
        if self.now() >= payment.expires_at:
            # This query was the final one: unpaid at expiry, so close at WeChat, then here.
            moved = await self.close_unpaid(payment, Source.SWEEPER, reason="expired")
            return f"expire:{moved.state.value}"
        if txn is None:
            log.warning("sweep.unknown_at_wechat")
        await self._reschedule(payment, self._next_query(payment), payment.attempts + 1)
        return "unpaid"

    async def _apply_final_state(self, payment: models.Payment, txn: Transaction) -> str:
        if txn.trade_state == "SUCCESS":
            return await self.confirm_paid(txn, Source.QUERY)  # type: ignore[attr-defined,no-any-return]
        if txn.trade_state == "CLOSED":
            moved = await self._apply(payment, Trigger.CLOSE, source=Source.QUERY,
                                      detail={"reason": "closed_at_wechat"})
            return f"closed:{moved.state.value}"
        log.error("alert.refund_seen", transaction_id=txn.transaction_id)
        moved = await self._apply(payment, Trigger.FLAG, source=Source.QUERY, payload={"reason": "refund_seen"},
                                  detail={"transaction_id": txn.transaction_id})
        return f"refund:{moved.state.value}"

    async def _sweep_created(self, payment: models.Payment, txn: Transaction | None) -> str:
        """Placement outcome unknown. Known and unpaid at WeChat → re-enter the identical order for its
        prepay_id; unknown at WeChat past the placement grace → it was never placed: close here."""
        if txn is None:
            age = (self.now() - payment.created_at).total_seconds()
            if age >= self.settings.placement_grace or self.now() >= payment.expires_at:
                moved = await self._apply(payment, Trigger.CLOSE, source=Source.SWEEPER,
                                          detail={"reason": "never_placed"})
                return f"never_placed:{moved.state.value}"
            await self._reschedule(payment, self.after(self.settings.created_grace), payment.attempts + 1)
            return "not_yet_at_wechat"
        try:
            placed = await self.place(payment)  # type: ignore[attr-defined]
        except errors.WechatRetryable:
            await self._reschedule(payment, self.after(self.settings.created_grace), payment.attempts + 1)
            return "place_failed"
        except errors.WechatFinal:
            return "place_rejected"
        return f"placed:{placed.state.value}"

    def _next_query(self, payment: models.Payment) -> dt.datetime:
        """The next query of the schedule (last step repeats), never later than the expiry itself,
        so that the final query happens at expiry."""
        schedule = self.settings.query_schedule
        step = schedule[min(payment.attempts + 1, len(schedule) - 1)]
        at = self.after(step)
        return at if self.now() >= payment.expires_at else min(at, payment.expires_at)

    async def close_unpaid(self, payment: models.Payment, source: Source, *, reason: str) -> models.Payment:
        """Close an unpaid payment at WeChat, then here. A close that WeChat refuses because the order
        was paid means `pay`, never `close`. Raises `WechatRetryable` when it cannot decide now (the
        sweeper reschedules)."""
        assert self.wechat is not None
        try:
            await self.wechat.close_order(payment.out_trade_no)
        except errors.WechatFinal as exc:
            if exc.wechat_code in ORDER_PAID:
                txn = await self.wechat.query(payment.out_trade_no)
                if txn is not None and txn.trade_state == "SUCCESS":
                    await self.confirm_paid(txn, source=Source.QUERY)  # type: ignore[attr-defined]
                    return await self.get_payment(payment.out_trade_no)
                raise errors.WechatRetryable("WeChat says paid but the query does not confirm it") from None
            if exc.wechat_code not in ORDER_CLOSED and exc.status != 404:
                log.warning("payment.close_refused", wechat_code=exc.wechat_code, error=str(exc))
                if source is Source.SWEEPER:
                    await self._reschedule(payment, self._next_query(payment), payment.attempts + 1)
                    return await self.get_payment(payment.out_trade_no)
                raise
        except errors.WechatRetryable:
            if source is Source.SWEEPER:
                await self._reschedule(payment, self._next_query(payment), payment.attempts + 1)
                return await self.get_payment(payment.out_trade_no)
            raise
        return await self._apply(payment, Trigger.CLOSE, source=source, detail={"reason": reason})

    async def close_by_payer(self, out_trade_no: str) -> models.Payment:
        """`POST /v1/payments/{id}/close`: final query, then close at WeChat; a paid one stays paid."""
        payment = await self.get_payment(out_trade_no)
        if payment.state not in (State.CREATED, State.PREPAID):
            return payment
        if self.wechat is None:
            raise errors.WechatRetryable("no WeChat Pay client is configured")
        with logs.bound(out_trade_no=out_trade_no):
            txn = await self.wechat.query(out_trade_no)
            if txn is not None and txn.trade_state in ("SUCCESS", "CLOSED", "REFUND"):
                await self._apply_final_state(payment, txn)
                return await self.get_payment(out_trade_no)
            if txn is None and payment.state is State.CREATED:
                # WeChat never heard of it; a retried placement can no longer happen once this is closed.
                return await self._apply(payment, Trigger.CLOSE, source=Source.API, detail={"reason": "payer_closed"})
            return await self.close_unpaid(payment, Source.API, reason="payer_closed")
