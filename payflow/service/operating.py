"""Operator actions (admin API): recheck, resend, requeue, dismiss — each through the state machine,
each leaving an event with source `admin` and the operator's note."""

from __future__ import annotations

import dataclasses
import datetime as dt

from payflow import errors, logs, models, states, tokens
from payflow.service.core import Core
from payflow.service.forwarding import Forwarding
from payflow.service.paid import FINAL_TRADE_STATES, Paid
from payflow.states import Source, State, Trigger
from payflow.wechat.api import WechatApi

log = logs.get_logger("payflow.service")

ACTIONS = ("recheck", "resend", "requeue", "dismiss")
# recheck and resend are not transitions (they ask WeChat, or the backend, again); requeue and dismiss are.
_APPLIES = {
    "recheck": frozenset({State.CREATED, State.PREPAID}),
    "resend": frozenset({State.NOTIFIED}),
    "requeue": states.TABLE.sources(Trigger.REQUEUE),
    "dismiss": states.TABLE.sources(Trigger.DISMISS),
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


class Operating:
    def __init__(self, core: Core, wechat: WechatApi, paid: Paid, forwarding: Forwarding) -> None:
        self.core = core
        self.wechat = wechat
        self.paid = paid
        self.forwarding = forwarding

    async def operate(self, out_trade_no: str, action: str, note: str) -> ActionResult:
        core = self.core
        payment = await core.load(out_trade_no)
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
                changes, lease = None, None
                if action == "requeue":
                    # The forward below holds a lease, as a notification's first forward does: no sweeper
                    # delivers the same event meanwhile; if this process dies, the lease runs out and one does.
                    lease = tokens.lease_token()
                    changes = {"next_attempt_at": core.now() + dt.timedelta(seconds=core.settings.lease)}
                try:
                    moved = await core.transition(payment, trigger, source=Source.ADMIN, payload={"note": note},
                                                  changes=changes, lease_token=lease)
                except errors.StaleState:
                    raise ActionNotApplicable(action, (await core.load(out_trade_no)).state) from None
                if action == "requeue":
                    moved = await self.forwarding.forward(moved)
                return ActionResult(moved, action, moved.state.value)
            if action == "resend":
                # Under its own lease, as requeue: a sweeper forwarding this payment right now keeps it (→ 409),
                # and none starts while this delivery is in flight.
                try:
                    payment = await core.store.claim(payment, now=core.now(), lease=core.settings.lease)
                except errors.StaleState:
                    raise errors.Conflict("a delivery of this payment is in flight; ask again shortly") from None
            # recheck and resend change no state by themselves: the audit event records who asked and why.
            await core.store.record_event(payment, action, source=Source.ADMIN, at=core.now(), detail={"note": note})
            if action == "resend":
                moved = await self.forwarding.forward(payment)
                return ActionResult(moved, action, "acknowledged" if moved.state is State.SYNCED else moved.state.value)
            return await self._recheck(payment)

    async def _recheck(self, payment: models.Payment) -> ActionResult:
        txn = await self.wechat.query(payment.out_trade_no, payment.appid)  # WechatRetryable → 503: nothing changed
        if txn is None:
            return ActionResult(payment, "recheck", "unknown_at_wechat")
        if txn.trade_state == "SUCCESS":
            outcome = await self.paid.confirm_paid(txn, Source.ADMIN)
        elif txn.trade_state in FINAL_TRADE_STATES:
            outcome = await self.paid.settle(payment, txn)
        else:
            outcome = txn.trade_state.lower()
        return ActionResult(await self.core.load(payment.out_trade_no), "recheck", outcome)
