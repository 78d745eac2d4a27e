"""One token bucket shared by every outbound WeChat call, with a pause for when WeChat says slow down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class RateLimiter:
    """`rate` calls per second on average, bursts up to `burst`; `pause(s)` stops everyone for s seconds."""

    def __init__(
        self, rate: float, burst: int | None = None, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(1, int(rate))
        self._monotonic = monotonic
        self._tokens = float(self.burst)
        self._updated = monotonic()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def pause(self, seconds: float) -> None:
        """After a 429 or FREQUENCY_LIMITED: nobody calls WeChat for `seconds`."""
        self._paused_until = max(self._paused_until, self._monotonic() + seconds)

    async def acquire(self) -> None:
        # The lock makes waiters queue in order instead of all waking at once after a pause.
        async with self._lock:
            while True:
                now = self._monotonic()
                if now < self._paused_until:
                    await asyncio.sleep(self._paused_until - now)
                    continue
                self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self.rate)
