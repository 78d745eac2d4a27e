"""The use cases. The only module that combines the state machine, the store and the outside clients."""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from payflow import errors, logs, models, states
from payflow.clock import Clock, SystemClock
from payflow.settings import Settings
from payflow.states import Source, State, Trigger
from payflow.store import PaymentStore
from payflow.wechat.api import JsapiOrder, Transaction, WechatApi
from payflow.wechat.notify import TRANSACTION_SUCCESS, MalformedNotification, NotificationVerifier

log = logs.get_logger(__name__)

SHANGHAI = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")
# How often to re-read and re-decide when concurrent writers keep winning the CAS.
_STALE_RETRIES = 5


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
        verifier: NotificationVerifier | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.wechat = wechat
        self.verifier = verifier
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

    async def _transition(
        self,
        payment: models.Payment,
        trigger: Trigger,
        *,
        source: Source,
        payload: Mapping[str, Any] | None = None,
        detail: Mapping[str, Any] | None = None,
        changes: Mapping[str, Any] | None = None,
        notification: models.Notification | None = None,
    ) -> models.Payment:
        """Plan `trigger` on the payment as read and write it with CAS; raises StaleState on a lost race."""
        payload = dict(payload or {})
        to = states.plan(payment, trigger, **payload)
        moved = await self.store.transition(
            payment, to, trigger, source=source, at=self.clock.now(),
            detail={**payload, **(detail or {})}, changes=changes, notification=notification,
        )
        log.info("payment.transitioned", out_trade_no=payment.out_trade_no, trigger=trigger.value,
                 source=source.value, from_state=payment.state.value, state=to.value)
        return moved

    async def _apply(self, payment: models.Payment, trigger: Trigger, **kwargs: Any) -> models.Payment:
        """`_transition`, but a lost race returns the winner's payment instead of raising.

        A loser does not retry blindly: whoever won already moved the payment on, and the caller decides
        from the fresh state what (if anything) is left to do.
        """
        try:
            return await self._transition(payment, trigger, **kwargs)
        except errors.StaleState:
            fresh = await self.get_payment(payment.out_trade_no)
            log.info("payment.transition_lost", out_trade_no=payment.out_trade_no, trigger=trigger.value,
                     state=fresh.state.value)
            return fresh

    # --- WeChat says paid ---------------------------------------------------------------------

    async def handle_notification(self, headers: Mapping[str, str], raw: bytes) -> str:
        """Verify, decrypt, check and apply one notification; returns its outcome.

        Returns normally only when the outcome is durable (the 2xx may be sent); raises
        `NotificationRejected` or `StoreUnavailable` so that WeChat delivers again.
        """
        if self.verifier is None:
            raise errors.StoreUnavailable("notifications cannot be verified: WeChat keys are not configured")
        note = self.verifier.verify(headers, raw)
        with logs.bound(notification_id=note.notification_id):
            if await self.store.get_notification(note.notification_id) is not None:
                log.info("notification.duplicate")
                return "duplicate"
            received = self.clock.now()
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
                raise MalformedNotification("mchid/appid do not belong to this merchant")
            with logs.bound(out_trade_no=txn.out_trade_no):
                outcome = await self.confirm_paid(txn, Source.NOTIFY, record=record)
                log.info("notification.accepted" if outcome == "accepted" else "notification.handled",
                         outcome=outcome)
                return outcome

    async def confirm_paid(
        self,
        txn: Transaction,
        source: Source,
        *,
        record: Callable[[str], models.Notification] | None = None,
    ) -> str:
        """Apply "WeChat says SUCCESS" (from a notification, a query or the bill) to the payment.

        Never moves a payment backwards; a wrong amount or a payment after close goes to needs_review.
        `record` builds the notification row, which commits together with the transition it caused.
        """
        for _ in range(_STALE_RETRIES):
            payment = await self.store.get(txn.out_trade_no)
            if payment is None:
                if record is not None:
                    await self.store.record_notification(record("unknown_payment"))
                log.error("alert.unknown_payment", out_trade_no=txn.out_trade_no, source=source.value,
                          transaction_id=txn.transaction_id, amount=txn.amount)
                return "unknown_payment"
            facts = {"transaction_id": txn.transaction_id, "paid_amount": txn.amount,
                     "paid_at": txn.success_time or self.clock.now()}
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
                    await self._transition(
                        payment, Trigger.PAY, source=source,
                        payload={"amount": txn.amount, "transaction_id": txn.transaction_id}, detail=detail,
                        # next_attempt_at = now: the notified row is the outbox; forwarding is due at once.
                        changes={**facts, "next_attempt_at": self.clock.now()},
                        notification=record("accepted") if record else None)
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


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _new_out_trade_no(now: dt.datetime) -> str:
    """28 characters of [0-9A-Za-z]: readable time prefix plus 48 random bits."""
    return f"PF{now.astimezone(SHANGHAI):%Y%m%d%H%M%S}{secrets.token_hex(6)}"
