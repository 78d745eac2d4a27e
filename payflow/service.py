"""The use cases. The only module that combines the state machine, the store and the outside clients."""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
import uuid
from collections.abc import Mapping
from typing import Any

from payflow import errors, logs, models, states
from payflow.clock import Clock, SystemClock
from payflow.settings import Settings
from payflow.states import Source, State, Trigger
from payflow.store import PaymentStore
from payflow.wechat.api import JsapiOrder, WechatApi

log = logs.get_logger(__name__)

SHANGHAI = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")


@dataclasses.dataclass(frozen=True, slots=True)
class NewPayment:
    """A validated `POST /v1/payments` request."""

    order_id: str
    amount: int
    description: str
    openid: str
    attach: str | None = None
    out_trade_no: str | None = None
    expires_in: int | None = None  # seconds

    def differences(self, payment: models.Payment) -> list[str]:
        """The fields in which this request contradicts the stored payment of the same order_id.

        `expires_in` is relative to the first request, so a retry cannot be compared on it.
        """
        diff = [name for name in ("amount", "description", "openid", "attach")
                if getattr(self, name) != getattr(payment, name)]
        if self.out_trade_no is not None and self.out_trade_no != payment.out_trade_no:
            diff.append("out_trade_no")
        return diff


@dataclasses.dataclass(frozen=True, slots=True)
class Created:
    payment: models.Payment
    pay_params: dict[str, str] | None
    new: bool  # False when an earlier request with the same order_id made it

    def view(self) -> dict[str, Any]:
        return {**self.payment.view(), "prepay_id": self.payment.prepay_id, "pay_params": self.pay_params}


class PaymentService:
    def __init__(
        self,
        store: PaymentStore,
        settings: Settings,
        *,
        wechat: WechatApi | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.wechat = wechat
        self.clock = clock or SystemClock()

    # --- create -------------------------------------------------------------------------------

    async def create_payment(self, request: NewPayment) -> Created:
        """Store the payment as `created` before calling WeChat, then place the JSAPI order.

        Idempotent by order_id: the same request returns the same payment (and retries a placement
        whose outcome was unknown); a different one raises `Conflict`.
        """
        existing = await self.store.get_by_order_id(request.order_id)
        if existing is None:
            now = self.clock.now()
            ttl = request.expires_in if request.expires_in is not None else self.settings.payment_ttl
            payment = models.Payment(
                out_trade_no=request.out_trade_no or _new_out_trade_no(now),
                order_id=request.order_id,
                amount=request.amount,
                description=request.description,
                openid=request.openid,
                attach=request.attach,
                state=State.CREATED,
                version=1,
                event_id=f"evt_{uuid.uuid4().hex}",
                created_at=now,
                updated_at=now,
                expires_at=(now + dt.timedelta(seconds=ttl)).replace(microsecond=0),
                # If we crash before WeChat answers, the sweeper finds out what happened after this grace.
                next_attempt_at=now + dt.timedelta(seconds=self.settings.created_grace),
            )
            try:
                created = await self.store.create(payment, source=Source.API,
                                                  detail={"expires_at": payment.expires_at.isoformat()})
            except errors.DuplicatePayment:
                # A concurrent request with the same order_id won the insert; answer as its retry.
                existing = await self.store.get_by_order_id(request.order_id)
                if existing is None:
                    raise errors.Conflict(
                        f"out_trade_no {payment.out_trade_no!r} is already used by another order") from None
            else:
                with logs.bound(out_trade_no=created.out_trade_no):
                    log.info("payment.created", order_id=created.order_id, amount=created.amount)
                    placed = await self._place(created)
                return Created(placed, self._pay_params(placed), new=True)

        diff = request.differences(existing)
        if diff:
            raise errors.Conflict(
                f"order_id {request.order_id!r} already has a payment with different {', '.join(diff)}")
        if existing.state is State.CREATED:
            with logs.bound(out_trade_no=existing.out_trade_no):
                existing = await self._place(existing)
        return Created(existing, self._pay_params(existing), new=False)

    async def _place(self, payment: models.Payment) -> models.Payment:
        if self.wechat is None:
            raise errors.WechatRetryable("no WeChat Pay client is configured")
        if self.settings.notify_url is None:
            raise errors.WechatRetryable("PAYFLOW_NOTIFY_URL is not configured")
        order = JsapiOrder(
            out_trade_no=payment.out_trade_no,
            description=payment.description,
            amount=payment.amount,
            openid=payment.openid,
            attach=payment.attach,
            time_expire=payment.expires_at.astimezone(SHANGHAI),
            notify_url=self.settings.notify_url,
        )
        try:
            prepay_id = await self.wechat.place_jsapi(order)
        except errors.WechatRetryable as exc:
            # Outcome unknown: the payment stays `created`; its next_attempt_at lets the sweeper query it.
            log.warning("payment.placement_deferred", error=str(exc), wechat_code=exc.wechat_code)
            raise
        except errors.WechatFinal as exc:
            await self._apply(payment, Trigger.CLOSE, source=Source.API,
                              detail={"reason": "placement_rejected", "wechat_code": exc.wechat_code,
                                      "message": str(exc)})
            raise
        first_query = self.settings.query_schedule[0]
        return await self._apply(
            payment, Trigger.PREPAY, source=Source.API, payload={"prepay_id": prepay_id},
            changes={"prepay_id": prepay_id,
                     "next_attempt_at": self.clock.now() + dt.timedelta(seconds=first_query)},
        )

    def _pay_params(self, payment: models.Payment) -> dict[str, str] | None:
        if payment.state is not State.PREPAID or payment.prepay_id is None or self.wechat is None:
            return None
        return self.wechat.pay_params(payment.prepay_id)

    # --- reads --------------------------------------------------------------------------------

    async def get_payment(self, out_trade_no: str) -> models.Payment:
        payment = await self.store.get(out_trade_no)
        if payment is None:
            raise errors.NotFound(f"no payment with out_trade_no {out_trade_no!r}")
        return payment

    async def timeline(self, out_trade_no: str) -> list[models.Event]:
        await self.get_payment(out_trade_no)
        return await self.store.events(out_trade_no)

    # --- transitions --------------------------------------------------------------------------

    async def _apply(
        self,
        payment: models.Payment,
        trigger: Trigger,
        *,
        source: Source,
        payload: Mapping[str, Any] | None = None,
        detail: Mapping[str, Any] | None = None,
        changes: Mapping[str, Any] | None = None,
    ) -> models.Payment:
        """Plan `trigger` on the payment as read, write it with CAS, and on a lost race return the winner's.

        A loser does not retry blindly: whoever won already moved the payment on, and the caller decides
        from the fresh state what (if anything) is left to do.
        """
        payload = dict(payload or {})
        to = states.plan(payment, trigger, **payload)
        try:
            moved = await self.store.transition(
                payment, to, trigger, source=source, at=self.clock.now(),
                detail={**payload, **(detail or {})}, changes=changes,
            )
        except errors.StaleState:
            fresh = await self.get_payment(payment.out_trade_no)
            log.info("payment.transition_lost", trigger=trigger.value, state=fresh.state.value)
            return fresh
        log.info("payment.transitioned", trigger=trigger.value, source=source.value,
                 from_state=payment.state.value, state=to.value)
        return moved


def _new_out_trade_no(now: dt.datetime) -> str:
    """28 characters of [0-9A-Za-z]: readable time prefix plus 48 random bits."""
    return f"PF{now.astimezone(SHANGHAI):%Y%m%d%H%M%S}{secrets.token_hex(6)}"
