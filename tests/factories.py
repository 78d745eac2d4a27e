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
