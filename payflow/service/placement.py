"""Creating payments: stored as `created` before WeChat hears of them, then placed as JSAPI orders."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import secrets
import uuid
from typing import Any

from payflow import errors, logs, models
from payflow.clock import SHANGHAI
from payflow.service.core import Core
from payflow.states import Source, State, Trigger
from payflow.wechat.api import TRADE_TYPES, Order, WechatApi

log = logs.get_logger("payflow.service")

# WeChat refused the request itself, so no order exists there under this out_trade_no: the refused payment
# releases its order_id and a corrected request for the same business order becomes a new payment. Not
# INVALID_REQUEST: WeChat also answers it to a re-entry whose parameters differ, when an order does exist;
# nor OUT_TRADE_NO_USED, ORDERPAID and the like, which say an order exists.
RELEASING_CODES = frozenset({"PARAM_ERROR", "APPID_MCHID_NOT_MATCH", "MCH_NOT_EXISTS", "NO_AUTH", "SIGN_ERROR"})


@dataclasses.dataclass(frozen=True, slots=True)
class NewPayment:
    """A validated `POST /v1/payments` request."""

    order_id: str
    amount: int
    description: str
    openid: str = ""  # jsapi and miniprogram only
    attach: str | None = None
    out_trade_no: str | None = None
    expires_in: int | None = None  # seconds
    trade_type: str = "jsapi"
    payer_client_ip: str | None = None  # h5 only
    h5_type: str | None = None  # h5 only

    def differences(self, payment: models.Payment) -> list[str]:
        """The fields in which this request contradicts the stored payment of the same order_id.

        `expires_in` is relative to the first request, so a retry cannot be compared on it.
        """
        diff = [name for name in ("amount", "description", "openid", "attach", "trade_type", "payer_client_ip",
                                  "h5_type")
                if getattr(self, name) != getattr(payment, name)]
        if self.out_trade_no is not None and self.out_trade_no != payment.out_trade_no:
            diff.append("out_trade_no")
        return diff


@dataclasses.dataclass(frozen=True, slots=True)
class Created:
    payment: models.Payment
    # What the front end needs to pay, by product (None until placed, or once the payment cannot be paid):
    # `pay_params` (JSAPI, mini program), `code_url` (Native), `h5_url` (H5), `app_params` (App).
    front: dict[str, Any]
    new: bool  # False when an earlier request with the same order_id made it

    @property
    def pay_params(self) -> dict[str, str] | None:
        return self.front.get("pay_params")

    def view(self) -> dict[str, Any]:
        return {**self.payment.view(), "prepay_id": self.payment.prepay_id, **self.front}


class Placement:
    def __init__(self, core: Core, wechat: WechatApi) -> None:
        self.core = core
        self.wechat = wechat

    async def create_payment(self, request: NewPayment) -> Created:
        """Store the payment as `created` before calling WeChat, then place the JSAPI order.

        Idempotent by order_id: the same request returns the same payment (and retries a placement
        whose outcome was unknown); a different one raises `Conflict`.
        """
        core = self.core
        existing = await core.store.get_by_order_id(request.order_id)
        if existing is None:  # none yet, or WeChat refused the earlier one outright (RELEASING_CODES)
            now = core.now()
            ttl = request.expires_in if request.expires_in is not None else core.settings.payment_ttl
            payment = models.Payment(
                out_trade_no=request.out_trade_no or _new_out_trade_no(now),
                order_id=request.order_id,
                amount=request.amount,
                description=request.description,
                openid=request.openid,
                attach=request.attach,
                trade_type=request.trade_type,
                appid=core.settings.appid_for(request.trade_type),
                payer_client_ip=request.payer_client_ip,
                h5_type=request.h5_type,
                state=State.CREATED,
                version=1,
                event_id=f"evt_{uuid.uuid4().hex}",
                created_at=now,
                updated_at=now,
                expires_at=(now + dt.timedelta(seconds=ttl)).replace(microsecond=0),
                # If we crash before WeChat answers, the sweeper finds out what happened after this grace.
                next_attempt_at=now + dt.timedelta(seconds=core.settings.created_grace),
            )
            try:
                created = await core.store.create(payment, source=Source.API,
                                                  detail={"expires_at": payment.expires_at.isoformat()})
            except errors.DuplicatePayment:
                # A concurrent request with the same order_id won the insert; answer as its retry.
                existing = await core.store.get_by_order_id(request.order_id)
                if existing is None:
                    raise errors.Conflict(
                        f"out_trade_no {payment.out_trade_no!r} is already used by another order") from None
            else:
                with logs.bound(out_trade_no=created.out_trade_no):
                    log.info("payment.created", order_id=created.order_id, amount=created.amount)
                    placed = await self.place(created, deadline=core.settings.wechat_timeout)
                return Created(placed, self.front(placed), new=True)

        diff = request.differences(existing)
        if diff:
            raise errors.Conflict(
                f"order_id {request.order_id!r} already has a payment with different {', '.join(diff)}")
        if existing.state is State.CREATED:
            with logs.bound(out_trade_no=existing.out_trade_no):
                existing = await self.place(existing, deadline=core.settings.wechat_timeout)
        return Created(existing, self.front(existing), new=False)

    def order(self, payment: models.Payment) -> Order:
        """The order exactly as first sent: WeChat's re-entry rule needs identical parameters."""
        notify_url = self.core.settings.notify_url
        if notify_url is None:
            raise errors.NotConfigured("WeChat cannot notify payflow: set PAYFLOW_NOTIFY_URL")
        return Order(
            out_trade_no=payment.out_trade_no,
            description=payment.description,
            amount=payment.amount,
            time_expire=payment.expires_at.astimezone(SHANGHAI),
            notify_url=notify_url,
            trade_type=payment.trade_type,
            appid=payment.appid,
            openid=payment.openid or None,
            attach=payment.attach,
            payer_client_ip=payment.payer_client_ip,
            h5_type=payment.h5_type,
        )

    async def place(self, payment: models.Payment, *, deadline: float | None = None) -> models.Payment:
        """Place (or re-enter) the order of a `created` payment → `prepaid`, or `closed` if refused.

        Raises `WechatRetryable` when the outcome is unknown (the payment stays `created`), and
        `WechatFinal` after closing the payment when WeChat refused it for good. A payer's request passes
        `deadline` (PAYFLOW_WECHAT_TIMEOUT): budget waits, attempts and their backoff together end by then,
        so a create never hangs; the sweeper, with no payer waiting, goes on as long as the client does.
        """
        core = self.core
        order = self.order(payment)
        try:
            try:
                async with asyncio.timeout(deadline):
                    placed = await self.wechat.place(order)
            except TimeoutError:
                raise errors.WechatRetryable(
                    f"WeChat did not place the order within {deadline:g}s; the payment is kept") from None
        except errors.WechatRetryable as exc:
            # Outcome unknown: the payment stays `created`; its next_attempt_at lets the sweeper query it.
            log.warning("payment.placement_deferred", error=str(exc), wechat_code=exc.wechat_code)
            raise
        except errors.WechatFinal as exc:
            released = exc.wechat_code in RELEASING_CODES
            await core.apply(payment, Trigger.CLOSE, source=Source.API,
                              detail={"reason": "placement_rejected", "wechat_code": exc.wechat_code,
                                      "message": str(exc), "order_id_released": released},
                              changes={"order_released": True} if released else None)
            raise
        # Native's code_url and H5's h5_url are what the front end shows; a prepay_id is signed for it on demand.
        answer = {"prepay_id": placed.prepay_id} if placed.prepay_id else {"pay_url": placed.code_url or placed.h5_url}
        return await core.apply(
            payment, Trigger.PREPAY, source=Source.API, payload=answer,
            changes={**answer, "next_attempt_at": core.after(core.settings.query_schedule[0])},
        )

    def front(self, payment: models.Payment) -> dict[str, Any]:
        """What the payer's front end needs, by product; every key None while the payment cannot be paid."""
        payable = payment.state is State.PREPAID
        api = TRADE_TYPES.get(payment.trade_type, "jsapi")
        if payment.trade_type == "native":
            return {"code_url": payment.pay_url if payable else None}
        if payment.trade_type == "h5":
            return {"h5_url": payment.pay_url if payable else None}
        prepay_id = payment.prepay_id if payable else None
        if api == "app":
            return {"app_params": self.wechat.app_params(prepay_id, payment.appid) if prepay_id else None}
        return {"pay_params": self.wechat.pay_params(prepay_id, payment.appid) if prepay_id else None}


def _new_out_trade_no(now: dt.datetime) -> str:
    """28 characters of [0-9A-Za-z]: readable time prefix plus 48 random bits."""
    return f"PF{now.astimezone(SHANGHAI):%Y%m%d%H%M%S}{secrets.token_hex(6)}"
