"""Transitions decided outside the payment flow: reconciliation against the bill, parking for review."""

from __future__ import annotations

from typing import Any

from payflow import models, states
from payflow.service.core import Core
from payflow.states import Source, Trigger

FLAGGABLE = states.TABLE.sources(Trigger.FLAG)


class Reviewing:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def mark_reconciled(
        self, payment: models.Payment, billed_amount: int, detail: dict[str, Any]
    ) -> models.Payment:
        return await self.core.apply(payment, Trigger.RECONCILE, source=Source.BILL, payload={"amount": billed_amount},
                                 detail=detail)

    async def flag(
        self, payment: models.Payment, reason: str, source: Source, detail: dict[str, Any]
    ) -> models.Payment:
        """Park a payment for a person, unless it cannot be flagged (reconciled) or already is."""
        if payment.state not in FLAGGABLE:
            return payment
        return await self.core.apply(payment, Trigger.FLAG, source=source, payload={"reason": reason}, detail=detail)
