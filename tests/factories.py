"""Small builders for test data."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from typing import Any

from payflow import models
from payflow.states import State

T0 = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
_counter = itertools.count(1)


def payment(**overrides: Any) -> models.Payment:
    n = next(_counter)
    base = models.Payment(
        out_trade_no=f"T{n:010d}",
        order_id=f"order-{n}",
        amount=100,
        description="Test goods",
        openid="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
        state=State.CREATED,
        version=1,
        created_at=T0,
        updated_at=T0,
        expires_at=T0 + dt.timedelta(hours=2),
        event_id=f"evt_{n:032x}",
        next_attempt_at=T0 + dt.timedelta(seconds=10),
    )
    return dataclasses.replace(base, **overrides)


def refund(payment: models.Payment, **overrides: Any) -> models.Refund:
    from payflow.states.refunds import RefundState

    n = next(_counter)
    base = models.Refund(
        out_refund_no=f"R{n:010d}",
        out_trade_no=payment.out_trade_no,
        amount=payment.amount,
        state=RefundState.CREATED,
        version=1,
        created_at=T0,
        updated_at=T0,
        event_id=f"evr_{n:032x}",
        origin="api",
        next_attempt_at=T0 + dt.timedelta(seconds=60),
    )
    return dataclasses.replace(base, **overrides)
