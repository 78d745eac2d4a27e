"""What the sweeper does with one due payment it claimed: forward a `notified` one again, query an unpaid
one (then settle, re-place, close at expiry, or query again later), tell the backend a `closed` one was closed,
clear a stray schedule."""

from __future__ import annotations

from payflow import errors, logs, models
from payflow.backend import PAYMENT_CLOSED, Backend, closed_event_body, derived_event_id
from payflow.service import outbox
from payflow.service.closing import Closing
from payflow.service.core import Core
from payflow.service.forwarding import Forwarding
from payflow.service.paid import FINAL_TRADE_STATES, Paid
from payflow.service.placement import Placement
from payflow.service.refunding import Refunding
from payflow.states import Source, State, Trigger
from payflow.store import Note
from payflow.wechat.api import Transaction, WechatApi

log = logs.get_logger("payflow.service")


class Sweeping:
    def __init__(self, core: Core, wechat: WechatApi, placement: Placement, paid: Paid, forwarding: Forwarding,
                 closing: Closing, refunding: Refunding, backend: Backend) -> None:
        self.core = core
        self.wechat = wechat
        self.placement = placement
        self.paid = paid
        self.forwarding = forwarding
        self.closing = closing
        self.refunding = refunding
        self.backend = backend

    async def sweep(self, payment: models.Payment) -> str:
        """Re-drive one claimed payment by its state; returns what happened (for the pass report)."""
        with logs.bound(out_trade_no=payment.out_trade_no, state=payment.state.value):
            if payment.state is State.NOTIFIED:
                moved = await self.forwarding.forward(payment)
                return f"forward:{moved.state.value}"
            if payment.state in (State.CREATED, State.PREPAID):
                return await self._sweep_unpaid(payment)
            if payment.state is State.CLOSED:
                return await self._tell_closed(payment)
            # Nothing is scheduled for other states; a stray schedule is cleared.
            await self.core.reschedule(payment, None, payment.attempts)
            return "nothing"

    async def _tell_closed(self, payment: models.Payment) -> str:
        """One attempt of `payment.closed` for a payment the `close` step scheduled; its outcome is an event on
        the payment's timeline, and nothing is scheduled after an acknowledgement, a rejection or exhaustion."""
        core = self.core
        closing = next((e for e in reversed(await core.store.events(payment.out_trade_no))
                        if e.to_state is State.CLOSED and e.trigger == Trigger.CLOSE.value), None)
        closed_at = closing.at if closing is not None else payment.updated_at
        reason = closing.detail.get("reason") if closing is not None else None
        body = closed_event_body(payment, closed_at, reason if isinstance(reason, str) else None)
        tried = await outbox.attempt(core, self.backend, PAYMENT_CLOSED, derived_event_id(payment.event_id,
                                     PAYMENT_CLOSED), body, payment.attempts, out_trade_no=payment.out_trade_no)
        if tried.verdict == "retry":
            await core.reschedule(payment, tried.next_at, tried.failures,
                                  note=Note("closed_event_failed", Source.BACKEND, tried.detail))
        else:
            await core.reschedule(payment, None, tried.failures,
                                  note=Note(f"closed_event_{tried.verdict}", Source.BACKEND, tried.detail))
        return f"closed_event:{tried.verdict}"

    async def _sweep_unpaid(self, payment: models.Payment) -> str:
        core = self.core
        try:
            txn = await self.wechat.query(payment.out_trade_no, payment.appid)
        except errors.NotConfigured:
            await self._unconfigured(payment)
            return "no_wechat"
        except errors.WechatError as exc:
            log.info("sweep.query_failed", error=str(exc), wechat_code=exc.wechat_code)
            await self.closing.reschedule_query(payment)
            return "query_failed"
        if txn is not None and txn.trade_state in FINAL_TRADE_STATES:
            return await self.paid.settle(payment, txn)
        if payment.state is State.CREATED:
            return await self._sweep_created(payment, txn)
        if core.now() >= payment.expires_at:
            # This query was the final one: unpaid at expiry, so close at WeChat, then here.
            moved = await self.closing.close_expired(payment)
            return f"expire:{moved.state.value}"
        if txn is None:
            log.warning("sweep.unknown_at_wechat")
        await self.closing.reschedule_query(payment)
        return "unpaid"

    async def _sweep_created(self, payment: models.Payment, txn: Transaction | None) -> str:
        """Placement outcome unknown. Known and unpaid at WeChat → re-enter the identical order for its
        prepay_id; unknown at WeChat past the placement grace → it was never placed: close here."""
        core = self.core
        if txn is None:
            age = (core.now() - payment.created_at).total_seconds()
            if age >= core.settings.placement_grace or core.now() >= payment.expires_at:
                moved = await core.apply(payment, Trigger.CLOSE, source=Source.SWEEPER,
                                         detail={"reason": "never_placed"})
                return f"never_placed:{moved.state.value}"
            await core.reschedule(payment, core.after(core.settings.created_grace), payment.attempts + 1)
            return "not_yet_at_wechat"
        try:
            placed = await self.placement.place(payment)
        except errors.NotConfigured:
            await self._unconfigured(payment)
            return "no_wechat"
        except errors.WechatRetryable:
            await core.reschedule(payment, core.after(core.settings.created_grace), payment.attempts + 1)
            return "place_failed"
        except errors.WechatFinal:
            return "place_rejected"
        return f"placed:{placed.state.value}"

    async def _unconfigured(self, payment: models.Payment) -> None:
        """WeChat cannot be asked in this deployment: look again at the slowest query step."""
        core = self.core
        await core.reschedule(payment, core.after(core.settings.query_schedule[-1]), payment.attempts + 1)
