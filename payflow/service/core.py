"""`Core`: what every part of the service shares — the store, the clock, the settings, planned
compare-and-set transitions, rescheduling, and tracked background tasks. Parts get it in their constructor."""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import logging
import random
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from payflow import errors, logs, models, states
from payflow.clock import Clock, SystemClock
from payflow.metrics import Metrics
from payflow.settings import Settings
from payflow.states import Source, Trigger
from payflow.store import Note, PaymentStore, Step

log = logs.get_logger("payflow.service")
# Where structlog sends `log`'s events; its level decides, so hot paths can skip building a dropped event.
STDLIB_LOG = logging.getLogger("payflow.service")


class Core:
    def __init__(
        self,
        store: PaymentStore,
        settings: Settings,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock or SystemClock()
        self.metrics = metrics or Metrics()
        self._rng = rng or random.Random()
        self._tasks: set[asyncio.Task[Any]] = set()
        # Told of every payment parked for review, with the reason (the automatic refunds listen).
        self.on_flagged: list[Callable[[models.Payment, str], None]] = []

    def now(self) -> dt.datetime:
        return self.clock.now()

    def after(self, seconds: float) -> dt.datetime:
        """now + seconds, with the configured ± jitter so retries of many payments spread out."""
        spread = self.settings.jitter
        factor = self._rng.uniform(1 - spread, 1 + spread) if spread else 1.0
        return self.now() + dt.timedelta(seconds=seconds * factor)

    async def load(self, out_trade_no: str) -> models.Payment:
        """The payment as stored; `NotFound` if there is none."""
        payment = await self.store.get(out_trade_no)
        if payment is None:
            raise errors.NotFound(f"no payment with out_trade_no {out_trade_no!r}")
        return payment

    # --- transitions --------------------------------------------------------------------------

    def step(
        self,
        payment: models.Payment,
        trigger: Trigger,
        outcome: str = "",
        *,
        source: Source,
        payload: Mapping[str, Any] | None = None,
        detail: Mapping[str, Any] | None = None,
        changes: Mapping[str, Any] | None = None,
        lease_token: str | None = None,
    ) -> Step:
        """Plan `trigger` on the payment as read: a `Step` for `store.decide` or `transition`.

        Raises IllegalTransition / GuardRejected from the state machine; the payload is kept on the event.
        """
        payload = dict(payload or {})
        if trigger is Trigger.CLOSE:
            # Due at once: the sweeper tells the backend `payment.closed`. Not for a payment WeChat refused
            # outright: its order_id is released, and a new payment of that order may already be on its way.
            released = bool((changes or {}).get("order_released"))
            changes = {"next_attempt_at": None if released else self.now(), **(changes or {})}
        return Step(outcome, trigger, states.plan(payment, trigger, **payload), source.value,
                    {**payload, **(detail or {})}, changes, lease_token)

    async def transition(
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
        step = self.step(payment, trigger, source=source, payload=payload, detail=detail, changes=changes,
                         lease_token=lease_token)
        assert step.to is not None
        moved = await self.store.transition(
            payment, step.to, trigger, source=step.source, at=self.now(), detail=step.detail,
            changes=step.changes, notification=notification, lease_token=lease_token,
        )
        self.count(step, payment)
        return moved

    async def apply(self, payment: models.Payment, trigger: Trigger, **kwargs: Any) -> models.Payment:
        """`transition`, but a lost race returns the winner's payment instead of raising.

        A loser does not retry blindly: whoever won already moved the payment on, and the caller decides
        from the fresh state what (if anything) is left to do.
        """
        try:
            return await self.transition(payment, trigger, **kwargs)
        except errors.StaleState:
            fresh = await self.load(payment.out_trade_no)
            log.info("payment.transition_lost", out_trade_no=payment.out_trade_no, trigger=trigger.value,
                     state=fresh.state.value)
            return fresh

    def flagged(self, payment: models.Payment, reason: str) -> None:
        for listener in self.on_flagged:
            listener(payment, reason)

    def count(self, step: Step, payment: models.Payment | None) -> None:
        """Metrics and the debug line of a step that was written. DEBUG only: every transition is already
        an order_events row, and one INFO line per request is enough."""
        if step.trigger is None or step.to is None or payment is None:
            return
        self.metrics.count_transition(step.trigger.value, step.source)
        if step.trigger is Trigger.FLAG and self.on_flagged:
            self.flagged(payment, str((step.detail or {}).get("reason")))
        if STDLIB_LOG.isEnabledFor(logging.DEBUG):
            log.debug("payment.transitioned", out_trade_no=payment.out_trade_no, trigger=step.trigger.value,
                      source=step.source, from_state=payment.state.value, state=step.to.value)

    async def reschedule(self, payment: models.Payment, at: dt.datetime | None, attempts: int, *,
                         note: Note | None = None) -> models.Payment:
        """Set the next attempt (with `note`'s event, if given); if the payment moved on meanwhile, the mover's
        schedule stands."""
        try:
            return await self.store.reschedule(payment, next_attempt_at=at, attempts=attempts, at=self.now(),
                                               note=note)
        except errors.StaleState:
            return await self.load(payment.out_trade_no)

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
