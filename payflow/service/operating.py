"""Operator actions (admin API): recheck, resend, requeue, dismiss — each through the state machine,
each leaving an event with source `admin` and the operator's note."""

from __future__ import annotations

import dataclasses
import datetime as dt

from payflow import errors, logs, models
from payflow.service.core import ServiceCore
from payflow.states import Source, State, Trigger

log = logs.get_logger("payflow.service")

ACTIONS = ("recheck", "resend", "requeue", "dismiss")
_APPLIES = {
    "recheck": (State.CREATED, State.PREPAID),
    "resend": (State.NOTIFIED,),
    "requeue": (State.NEEDS_REVIEW,),
    "dismiss": (State.NEEDS_REVIEW,),
}


class ActionNotApplicable(errors.Conflict):
    code = "action_not_applicable"

    def __init__(self, action: str, state: State) -> None:
        super().__init__(f"{action} does not apply to a payment that is {state.value}")
        self.state = state


@dataclasses.dataclass(frozen=True, slots=True)
class ActionResult:
    payment: models.Payment
    action: str
    outcome: str


class Operating(ServiceCore):
    async def operate(self, out_trade_no: str, action: str, note: str) -> ActionResult:
        payment = await self.get_payment(out_trade_no)
        if action not in ACTIONS:
            raise errors.NotFound(f"no operator action {action!r}")
        if payment.state not in _APPLIES[action]:
            raise ActionNotApplicable(action, payment.state)
        if action == "requeue" and payment.transaction_id is None:
            # Flagged before WeChat ever confirmed a payment: there is nothing to tell the backend.
            raise ActionNotApplicable(action, payment.state)
        with logs.bound(out_trade_no=out_trade_no, action=action):
            log.info("admin.action_requested", note=note)
            if action in ("requeue", "dismiss"):
                trigger = Trigger.REQUEUE if action == "requeue" else Trigger.DISMISS
                changes = {"next_attempt_at": self.now()} if action == "requeue" else None
                try:
                    moved = await self._transition(payment, trigger, source=Source.ADMIN, payload={"note": note},
                                                   changes=changes)
                except errors.StaleState:
                    raise ActionNotApplicable(action, (await self.get_payment(out_trade_no)).state) from None
                if action == "requeue":
                    moved = await self.forward(moved)  # type: ignore[attr-defined]
                return ActionResult(moved, action, moved.state.value)
            # recheck and resend change no state by themselves: the audit event records who asked and why.
            await self.store.record_event(payment, action, source=Source.ADMIN, at=self.now(), detail={"note": note})
            if action == "resend":
                moved = await self.forward(payment)  # type: ignore[attr-defined]
                return ActionResult(moved, action, "acknowledged" if moved.state is State.SYNCED else moved.state.value)
            return await self._recheck(payment)

    async def _recheck(self, payment: models.Payment) -> ActionResult:
        if self.wechat is None:
            raise errors.WechatRetryable("no WeChat Pay client is configured")
        txn = await self.wechat.query(payment.out_trade_no)  # WechatRetryable → 503: nothing changed
        if txn is None:
            return ActionResult(payment, "recheck", "unknown_at_wechat")
        if txn.trade_state == "SUCCESS":
            outcome = await self.confirm_paid(txn, Source.ADMIN)  # type: ignore[attr-defined]
        elif txn.trade_state in ("CLOSED", "REFUND"):
            outcome = await self._apply_final_state(payment, txn)  # type: ignore[attr-defined]
        else:
            outcome = txn.trade_state.lower()
        return ActionResult(await self.get_payment(payment.out_trade_no), "recheck", outcome)


def stuck_thresholds(core: ServiceCore) -> tuple[dt.datetime, dt.datetime]:
    """(created_before, expired_before) for the `stuck` listing: a `created` payment is stuck once its
    placement grace is over, a `prepaid` one once it expired without being closed."""
    now = core.now()
    return now - dt.timedelta(seconds=core.settings.placement_grace), now
