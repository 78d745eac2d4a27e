"""Forwarding the paid event of a `notified` payment until the business backend acknowledges it.

The first forward of a payment this process marked paid is queued here rather than started at once:
at most `forward_concurrency` run together (so a burst of payments cannot become a burst of thousands of
requests at the backend), and while WeChat notifications are being handled only one runs, so the
acknowledgements WeChat is waiting for come first (WeChat redelivers what is not acknowledged within
seconds, which only adds load). The queue is memory: the payment is durably `notified` under this
process's lease before it is queued, so if the process dies, or the queue is full, or a forward waits past
its lease, a sweeper forwards it instead.
"""

from __future__ import annotations

import collections
import contextvars

from payflow import errors, logs, models
from payflow.backend import Backend
from payflow.service.core import Core
from payflow.states import Source, State, Trigger
from payflow.store import Note

log = logs.get_logger("payflow.service")


class Forwarding:
    def __init__(self, core: Core, backend: Backend) -> None:
        self.core = core
        self.backend = backend
        # WeChat notifications being handled right now (forwarders yield to them)
        self._intake = 0
        # first forwards waiting for a forwarder, and how many forwarders run
        self._pending: collections.deque[models.Payment] = collections.deque()
        self._forwarders = 0

    @property
    def backlog(self) -> int:
        """First forwards queued and not yet started."""
        return len(self._pending)

    def forward_soon(self, payment: models.Payment) -> None:
        """Queue the first forward of a payment whose lease this process holds; returns at once."""
        if len(self._pending) >= self.core.settings.forward_backlog:
            # The lease runs out and a sweeper forwards it.
            log.warning("forward.left_to_sweeper", out_trade_no=payment.out_trade_no, reason="backlog_full",
                        backlog=len(self._pending))
            return
        self._pending.append(payment)
        self._start_forwarders()

    def handling_notification(self) -> _InFlight:
        """`with forwarding.handling_notification():` marks a WeChat notification as in flight; first
        forwards drop to one at a time meanwhile."""
        return _InFlight(self)

    def _enter_notification(self) -> None:
        self._intake += 1

    def _leave_notification(self) -> None:
        self._intake -= 1
        if not self._intake and self._pending:
            self._start_forwarders()

    def _start_forwarders(self) -> None:
        wanted = 1 if self._intake else self.core.settings.forward_concurrency
        while self._forwarders < min(wanted, len(self._pending)):
            self._forwarders += 1
            # A forwarder outlives the request that started it: none of that request's log context.
            self.core.spawn(self._forwarder(), name="forwarder", context=contextvars.Context())

    async def _forwarder(self) -> None:
        try:
            while self._pending:
                payment = self._pending.popleft()
                if payment.next_attempt_at is not None and payment.next_attempt_at <= self.core.now():
                    # Waited past its lease: a sweeper may be on it already, and will be if not.
                    log.info("forward.left_to_sweeper", out_trade_no=payment.out_trade_no, reason="lease_expired")
                    continue
                await self.forward(payment)
                if self._intake and self._forwarders > 1:
                    break  # notifications are in flight again: leave the backlog to one forwarder
        finally:
            self._forwarders -= 1

    async def forward(self, payment: models.Payment) -> models.Payment:
        """One delivery attempt for a `notified` payment whose lease the caller holds.

        2xx → `sync`; 409/410/422 → `flag` with the backend's answer kept; anything else → the next
        step of PAYFLOW_FORWARD_SCHEDULE, and `flag` with an alert once the schedule is exhausted.
        """
        if payment.state is not State.NOTIFIED:
            return payment
        core = self.core
        with logs.bound(out_trade_no=payment.out_trade_no):
            try:
                delivery = await self.backend.deliver(payment)
            except errors.NotConfigured as exc:
                log.warning("forward.unconfigured", error=str(exc))
                return await self._failed(payment, {"event_id": payment.event_id, "attempt": payment.attempts + 1,
                                                    "error": str(exc)})
            detail = {"event_id": payment.event_id, "attempt": payment.attempts + 1, **delivery.detail()}
            core.metrics.forwards.labels(outcome=delivery.outcome).inc()
            if delivery.outcome == "acked":
                log.debug("forward.acknowledged", status=delivery.status)
                return await core.apply(payment, Trigger.SYNC, source=Source.BACKEND, detail=detail)
            if delivery.outcome == "rejected":
                log.error("alert.backend_rejected", status=delivery.status, body=delivery.body)
                return await core.apply(payment, Trigger.FLAG, source=Source.BACKEND,
                                        payload={"reason": "backend_rejected"}, detail=detail)
            log.info("forward.failed", status=delivery.status, error=delivery.error, attempt=detail["attempt"])
            return await self._failed(payment, detail)

    async def _failed(self, payment: models.Payment, detail: dict[str, object]) -> models.Payment:
        core = self.core
        schedule = core.settings.forward_schedule
        failures = payment.attempts + 1
        if failures > len(schedule):
            log.error("alert.forward_exhausted", out_trade_no=payment.out_trade_no, attempts=failures)
            core.metrics.forwards.labels(outcome="exhausted").inc()
            return await core.apply(payment, Trigger.FLAG, source=Source.SWEEPER,
                                    payload={"reason": "forward_exhausted"}, detail=detail)
        # Every failed attempt leaves its event with the backend's answer (the operator's "why not yet?").
        return await core.reschedule(payment, core.after(schedule[failures - 1]), failures,
                                     note=Note("forward_failed", Source.BACKEND, detail))


class _InFlight:
    __slots__ = ("_forwarding",)

    def __init__(self, forwarding: Forwarding) -> None:
        self._forwarding = forwarding

    def __enter__(self) -> None:
        self._forwarding._enter_notification()

    def __exit__(self, *exc: object) -> None:
        self._forwarding._leave_notification()
