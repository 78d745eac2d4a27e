"""The use cases: the only package that combines the state machine, the store and the outside clients.

Each part names its collaborators in its constructor and shares one `Core`:

    Forwarding(core, backend)                 paid events to the backend, the first-forward queue
    Refunding(core, wechat, backend)          refunds: stored, submitted, followed, forwarded; automatic ones
    Paid(core, verifier, forwarding, refunding)   notifications and every other "WeChat says SUCCESS"
    Placement(core, wechat)                   create a payment, place its order at WeChat
    Closing(core, wechat, paid)               the payer's close and the expiry close
    Reads(core, wechat, paid)                 status polls (query on read), timelines, the admin listing
    Sweeping(core, wechat, placement, paid, forwarding, closing, refunding, backend)   one due payment, re-driven
    Operating(core, wechat, paid, forwarding) operator actions
    Reviewing(core)                           the bill's verdicts: reconcile, park for review

`PaymentService` wires them and is what the app, the commands and the benchmarks call.
"""

from __future__ import annotations

import random

from payflow.backend import Backend
from payflow.clock import Clock
from payflow.metrics import Metrics
from payflow.service.closing import Closing
from payflow.service.core import Core
from payflow.service.forwarding import Forwarding
from payflow.service.operating import ActionNotApplicable, ActionResult, Operating
from payflow.service.paid import Paid
from payflow.service.placement import Created, NewPayment, Placement
from payflow.service.reads import STUCK, Listing, Reads
from payflow.service.refunding import NewRefund, Refunding
from payflow.service.reviewing import Reviewing
from payflow.service.sweeping import Sweeping
from payflow.service.unconfigured import UnconfiguredBackend, UnconfiguredVerifier, UnconfiguredWechat
from payflow.settings import Settings
from payflow.store import PaymentStore
from payflow.wechat.api import WechatApi
from payflow.wechat.notify import Verifier

__all__ = ["STUCK", "ActionNotApplicable", "ActionResult", "Core", "Created", "Listing", "NewPayment", "NewRefund",
           "PaymentService"]


class PaymentService:
    """create → place → (notification | query | bill) → forward → sync; sweeps re-drive every step.

    A collaborator left out (None) is a null object that raises `errors.NotConfigured` when used.
    """

    def __init__(
        self,
        store: PaymentStore,
        settings: Settings,
        *,
        wechat: WechatApi | None = None,
        backend: Backend | None = None,
        verifier: Verifier | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.core = core = Core(store, settings, clock=clock, rng=rng, metrics=metrics)
        self.wechat: WechatApi = wechat if wechat is not None else UnconfiguredWechat()
        self.backend: Backend = backend if backend is not None else UnconfiguredBackend()
        self.forwarding = Forwarding(core, self.backend)
        self.refunding = Refunding(core, self.wechat, self.backend)
        core.on_flagged.append(self.refunding.flagged)
        self.paid = Paid(core, verifier if verifier is not None else UnconfiguredVerifier(), self.forwarding,
                         self.refunding)
        self.placement = Placement(core, self.wechat)
        self.closing = Closing(core, self.wechat, self.paid)
        self.reads = Reads(core, self.wechat, self.paid)
        self.sweeping = Sweeping(core, self.wechat, self.placement, self.paid, self.forwarding, self.closing,
                                 self.refunding, self.backend)
        self.operating = Operating(core, self.wechat, self.paid, self.forwarding)
        self.reviewing = Reviewing(core)

        # The use cases, as the parts define them (bound once: the notify path pays no extra call).
        self.create_payment = self.placement.create_payment
        self.order = self.placement.order
        self.view_payment = self.reads.view_payment
        self.get_payment = self.reads.get_payment
        self.timeline = self.reads.timeline
        self.list_payments = self.reads.list_payments
        self.close_by_payer = self.closing.close_by_payer
        self.handle_notification = self.paid.handle_notification
        self.confirm_paid = self.paid.confirm_paid
        self.sweep = self.sweeping.sweep
        self.sweep_refund = self.refunding.sweep
        self.create_refund = self.refunding.create_refund
        self.view_refund = self.refunding.view_refund
        self.refunds_of = self.refunding.refunds_of
        self.admin_refund = self.refunding.admin_refund
        self.operate = self.operating.operate
        self.mark_reconciled = self.reviewing.mark_reconciled
        self.flag = self.reviewing.flag
        self.now = core.now
        self.drain = core.drain

    @property
    def store(self) -> PaymentStore:
        return self.core.store

    @property
    def settings(self) -> Settings:
        return self.core.settings

    @property
    def metrics(self) -> Metrics:
        return self.core.metrics
