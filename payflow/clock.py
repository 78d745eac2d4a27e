"""Injected time: the service, store and sweeper ask a clock, so tests advance time instead of sleeping."""

from __future__ import annotations

import datetime as dt
from typing import Protocol

# WeChat Pay's time zone: order expiry times, bill dates and the reconcile schedule are read in it.
SHANGHAI = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")


class Clock(Protocol):
    def now(self) -> dt.datetime: ...


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._now = start or dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def now(self) -> dt.datetime:
        return self._now

    def set(self, moment: dt.datetime) -> dt.datetime:
        self._now = moment
        return self._now

    def advance(self, seconds: float) -> dt.datetime:
        self._now += dt.timedelta(seconds=seconds)
        return self._now
