"""What every use case shares: collaborators, the clock, CAS transitions, and tracked background tasks."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import datetime as dt
import logging
import random
from collections.abc import Coroutine, Mapping
from typing import Any

from payflow import errors, logs, models, states
from payflow.backend import BackendClient
from payflow.clock import Clock, SystemClock
from payflow.metrics import Metrics
from payflow.settings import Settings
from payflow.states import Source, Trigger
from payflow.store import PaymentStore, Step
from payflow.wechat.api import WechatApi
from payflow.wechat.notify import NotificationVerifier

log = logs.get_logger("payflow.service")
# Where structlog sends `log`'s events; its level decides, so hot paths can skip building a dropped event.
STDLIB_LOG = logging.getLogger("payflow.service")

SHANGHAI = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")
# How often to re-read and re-decide when concurrent writers keep winning the CAS.
STALE_RETRIES = 5


class ServiceCore:
    def __init__(
        self,
        store: PaymentStore,
        settings: Settings,
        *,
        wechat: WechatApi | None = None,
        backend: BackendClient | None = None,
        verifier: NotificationVerifier | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.wechat = wechat
        self.backend = backend
        self.verifier = verifier
        self.clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self.metrics = metrics or Metrics()
        self._tasks: set[asyncio.Task[Any]] = set()
        # WeChat notifications being handled right now (forwarding yields to them; see Forwarding)
        self._intake = 0
        # first forwards waiting for a forwarder, and how many forwarders run
        self._pending_forwards: collections.deque[models.Payment] = collections.deque()
        self._forwarders = 0
        # query-on-read: out_trade_no → (when asked, the shared query task)
        self._read_queries: dict[str, tuple[dt.datetime, asyncio.Task[None]]] = {}

    def now(self) -> dt.datetime:
        return self.clock.now()

    def after(self, seconds: float) -> dt.datetime:
        """now + seconds, with the configured ± jitter so retries of many payments spread out."""
        spread = self.settings.jitter
        factor = self._rng.uniform(1 - spread, 1 + spread) if spread else 1.0
        return self.now() + dt.timedelta(seconds=seconds * factor)

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
        lease_token: str | None = None,
    ) -> models.Payment:
        """Plan `trigger` on the payment as read and write it with CAS; raises StaleState on a lost race."""
        step = self._step(payment, trigger, "", source=source, payload=payload, detail=detail, changes=changes,
                          lease_token=lease_token)
        assert step.to is not None
        moved = await self.store.transition(
            payment, step.to, trigger, source=step.source, at=self.now(), detail=step.detail,
            changes=changes, notification=notification, lease_token=lease_token,
        )
        self._count(step, payment)
        return moved

    def _step(
        self,
        payment: models.Payment,
        trigger: Trigger,
        outcome: str,
        *,
        source: Source,
        payload: Mapping[str, Any] | None = None,
        detail: Mapping[str, Any] | None = None,
        changes: Mapping[str, Any] | None = None,
        lease_token: str | None = None,
    ) -> Step:
        """`_transition` as a `Step` for `store.decide`: planned now, written by the store."""
        payload = dict(payload or {})
        return Step(outcome, trigger, states.plan(payment, trigger, **payload), source.value,
                    {**payload, **(detail or {})}, changes, lease_token)

    def _count(self, step: Step, payment: models.Payment | None) -> None:
        """Metrics and the debug line of a step that was written. DEBUG only: every transition is already
        an order_events row, and one INFO line per request is enough."""
        if step.trigger is None or step.to is None or payment is None:
            return
        self.metrics.count_transition(step.trigger.value, step.source)
        if STDLIB_LOG.isEnabledFor(logging.DEBUG):
            log.debug("payment.transitioned", out_trade_no=payment.out_trade_no, trigger=step.trigger.value,
                      source=step.source, from_state=payment.state.value, state=step.to.value)

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

    async def _reschedule(self, payment: models.Payment, at: dt.datetime | None, attempts: int) -> models.Payment:
        """Set the next attempt; if the payment moved on meanwhile, the mover's schedule stands."""
        try:
            return await self.store.reschedule(payment, next_attempt_at=at, attempts=attempts, at=self.now())
        except errors.StaleState:
            return await self.get_payment(payment.out_trade_no)

    # --- background work ----------------------------------------------------------------------

    def spawn(
        self, coroutine: Coroutine[Any, Any, Any], name: str, *, context: contextvars.Context | None = None
    ) -> None:
        """Run `coroutine` in the background; kept so shutdown can wait for it, and failures logged.

        It inherits the caller's log context (request id, ...) unless given another `context`.
        """
        task = asyncio.get_running_loop().create_task(coroutine, name=name, context=context)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task.failed", task=task.get_name(), error=repr(task.exception()))

    async def drain(self, grace: float = 10.0) -> None:
        """Wait up to `grace` seconds for background work, then cancel what is left.

        A cancelled forward is not lost: its payment is still `notified` and the sweeper redoes it.
        """
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
