"""Closing an unpaid payment: at expiry (the sweeper's final query found it unpaid) or because the payer
gave up (`POST /v1/payments/{id}/close`). WeChat closes first; a close WeChat refuses because the order
was paid means `pay`, never `close`."""

from __future__ import annotations

import datetime as dt

from payflow import errors, logs, models
from payflow.service.core import Core
from payflow.service.paid import FINAL_TRADE_STATES, Paid
from payflow.states import Source, State, Trigger
from payflow.wechat.api import WechatApi
from payflow.wechat.client import ORDER_PAID

log = logs.get_logger("payflow.service")

ORDER_CLOSED = frozenset({"ORDER_CLOSED", "ORDERCLOSED"})


class Closing:
    def __init__(self, core: Core, wechat: WechatApi, paid: Paid) -> None:
        self.core = core
        self.wechat = wechat
        self.paid = paid

    async def close_by_payer(self, out_trade_no: str) -> models.Payment:
        """Final query, then close at WeChat; a paid one stays paid, a closed one stays closed."""
        core = self.core
        payment = await core.load(out_trade_no)
        if payment.state not in (State.CREATED, State.PREPAID):
            return payment
        with logs.bound(out_trade_no=out_trade_no):
            txn = await self.wechat.query(out_trade_no, payment.appid)
            if txn is not None and txn.trade_state in FINAL_TRADE_STATES:
                await self.paid.settle(payment, txn)
                return await core.load(out_trade_no)
            if txn is None and payment.state is State.CREATED:
                # WeChat never heard of it; a retried placement can no longer happen once this is closed.
                return await core.apply(payment, Trigger.CLOSE, source=Source.API, detail={"reason": "payer_closed"})
            return await self.close_unpaid(payment, Source.API, reason="payer_closed")

    async def close_expired(self, payment: models.Payment) -> models.Payment:
        """The sweeper's final query at expiry found the payment unpaid: close it at WeChat, then here.
        When WeChat cannot decide now, the payment is rescheduled and returned as it stands."""
        return await self.close_unpaid(payment, Source.SWEEPER, reason="expired")

    async def close_unpaid(self, payment: models.Payment, source: Source, *, reason: str) -> models.Payment:
        """Close at WeChat, then here. Raises `WechatRetryable` when it cannot decide now, unless `source`
        is the sweeper: then the payment is rescheduled for its next query instead."""
        core = self.core
        try:
            await self.wechat.close_order(payment.out_trade_no)
        except errors.WechatFinal as exc:
            if exc.wechat_code in ORDER_PAID:
                txn = await self.wechat.query(payment.out_trade_no, payment.appid)
                if txn is not None and txn.trade_state == "SUCCESS":
                    await self.paid.confirm_paid(txn, source=Source.QUERY)
                    return await core.load(payment.out_trade_no)
                raise errors.WechatRetryable("WeChat says paid but the query does not confirm it") from None
            if exc.wechat_code not in ORDER_CLOSED and exc.status != 404:
                log.warning("payment.close_refused", wechat_code=exc.wechat_code, error=str(exc))
                if source is Source.SWEEPER:
                    return await self.reschedule_query(payment)
                raise
        except errors.WechatRetryable:
            if source is Source.SWEEPER:
                return await self.reschedule_query(payment)
            raise
        return await core.apply(payment, Trigger.CLOSE, source=source, detail={"reason": reason})

    async def reschedule_query(self, payment: models.Payment) -> models.Payment:
        """Schedule the next query of an unpaid payment (one more attempt)."""
        return await self.core.reschedule(payment, self.next_query(payment), payment.attempts + 1)

    def next_query(self, payment: models.Payment) -> dt.datetime:
        """The next query of the schedule (last step repeats), never later than the expiry itself,
        so that the final query happens at expiry."""
        core = self.core
        schedule = core.settings.query_schedule
        step = schedule[min(payment.attempts + 1, len(schedule) - 1)]
        at = core.after(step)
        return at if core.now() >= payment.expires_at else min(at, payment.expires_at)
