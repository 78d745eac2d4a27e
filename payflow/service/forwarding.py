"""Forwarding the paid event of a `notified` payment until the business backend acknowledges it."""

from __future__ import annotations

from payflow import logs, models
from payflow.service.core import ServiceCore
from payflow.states import Source, State, Trigger

log = logs.get_logger("payflow.service")


class Forwarding(ServiceCore):
    async def forward(self, payment: models.Payment) -> models.Payment:
        """One delivery attempt for a `notified` payment whose lease the caller holds.

        2xx → `sync`; 409/410/422 → `flag` with the backend's answer kept; anything else → the next
        step of PAYFLOW_FORWARD_SCHEDULE, and `flag` with an alert once the schedule is exhausted.
        """
        if payment.state is not State.NOTIFIED:
            return payment
        with logs.bound(out_trade_no=payment.out_trade_no):
            if self.backend is None:
                log.warning("forward.unconfigured")
                return await self._forward_failed(payment, {"error": "PAYFLOW_BACKEND_URL is not configured"})
            delivery = await self.backend.deliver(payment)
            detail = {"event_id": payment.event_id, "attempt": payment.attempts + 1, **delivery.detail()}
            self.metrics.forwards.labels(outcome=delivery.outcome).inc()
            if delivery.outcome == "acked":
                log.debug("forward.acknowledged", status=delivery.status)
                return await self._apply(payment, Trigger.SYNC, source=Source.BACKEND, detail=detail)
            if delivery.outcome == "rejected":
                log.error("alert.backend_rejected", status=delivery.status, body=delivery.body)
                return await self._apply(payment, Trigger.FLAG, source=Source.BACKEND,
                                         payload={"reason": "backend_rejected"}, detail=detail)
            log.info("forward.failed", status=delivery.status, error=delivery.error, attempt=detail["attempt"])
            return await self._forward_failed(payment, detail)

    async def _forward_failed(self, payment: models.Payment, detail: dict[str, object]) -> models.Payment:
        schedule = self.settings.forward_schedule
        failures = payment.attempts + 1
        if failures > len(schedule):
            log.error("alert.forward_exhausted", out_trade_no=payment.out_trade_no, attempts=failures)
            self.metrics.forwards.labels(outcome="exhausted").inc()
            return await self._apply(payment, Trigger.FLAG, source=Source.SWEEPER,
                                     payload={"reason": "forward_exhausted"}, detail=detail)
        return await self._reschedule(payment, self.after(schedule[failures - 1]), failures)
