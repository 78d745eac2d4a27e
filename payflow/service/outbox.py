"""One delivery attempt of an event other than `payment.paid` (`payment.closed`, `refund.succeeded`,
`refund.failed`), judged by the rules the paid event follows: 2xx acknowledged, 409/410/422 rejected for good
(alert), anything else retried along PAYFLOW_FORWARD_SCHEDULE, and an alert once the schedule is exhausted.

The caller owns the record the event belongs to (the outbox row: a closed payment, a refund) and writes what
the attempt decided: its next attempt, or the step an acknowledgement causes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Literal

from payflow import errors, logs
from payflow.backend import Backend, Delivery
from payflow.service.core import Core

log = logs.get_logger("payflow.service")

Verdict = Literal["acked", "rejected", "retry", "exhausted"]


@dataclasses.dataclass(frozen=True, slots=True)
class Attempt:
    verdict: Verdict
    detail: dict[str, Any]  # for the record's event row: the type, id, attempt number and the backend's answer
    failures: int  # failed attempts so far, this one included when it failed
    next_at: dt.datetime | None  # when to try again (`retry` only)


async def attempt(core: Core, backend: Backend, event_type: str, event_id: str, body: bytes, attempts: int,
                  **context: Any) -> Attempt:
    """Send the event once; `attempts` is how many failed before. Never raises for the backend's failures."""
    try:
        delivery = await backend.send(event_id, body)
    except errors.NotConfigured as exc:
        delivery = Delivery("retry", error=str(exc))
    detail = {"type": event_type, "event_id": event_id, "attempt": attempts + 1, **delivery.detail()}
    verdict: Verdict = delivery.outcome
    failures, next_at = attempts, None
    if verdict == "rejected":
        log.error("alert.backend_rejected", type=event_type, event_id=event_id, status=delivery.status,
                  body=delivery.body, **context)
    elif verdict == "retry":
        schedule = core.settings.forward_schedule
        failures = attempts + 1
        if failures > len(schedule):
            verdict = "exhausted"
            log.error("alert.forward_exhausted", type=event_type, event_id=event_id, attempts=failures, **context)
        else:
            next_at = core.after(schedule[failures - 1])
            log.info("event.forward_failed", type=event_type, event_id=event_id, status=delivery.status,
                     error=delivery.error, attempt=failures, **context)
    core.metrics.events.labels(type=event_type, outcome=verdict).inc()
    return Attempt(verdict, detail, failures, next_at)
