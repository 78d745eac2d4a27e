"""Transitions decided outside the payment flow: reconciliation against the bill, parking for review."""

from __future__ import annotations

from typing import Any

from payflow import models
from payflow.service.core import ServiceCore
from payflow.states import Source, State, Trigger

# States from which `flag` is allowed (DESIGN §2).
FLAGGABLE = frozenset({State.CREATED, State.PREPAID, State.NOTIFIED, State.SYNCED, State.CLOSED})


class Reviewing(ServiceCore):
    async def mark_reconciled(
        self, payment: models.Payment, billed_amount: int, detail: dict[str, Any]
    ) -> models.Payment:
        return await self._apply(payment, Trigger.RECONCILE, source=Source.BILL, payload={"amount": billed_amount},
                                 detail=detail)

    async def flag(
        self, payment: models.Payment, reason: str, source: Source, detail: dict[str, Any]
    ) -> models.Payment:
        """Park a payment for a person, unless it cannot be flagged (reconciled) or already is."""
        if payment.state not in FLAGGABLE:
            return payment
        return await self._apply(payment, Trigger.FLAG, source=source, payload={"reason": reason}, detail=detail)
