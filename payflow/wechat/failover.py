"""WeChat's backup API domain: the order in which a call tries the domains, and the breaker over the primary.

WeChat documents `api2.mch.weixin.qq.com` for when `api.mch.weixin.qq.com` cannot be reached (WECHATPAY_V3 §0).
A request's signature covers its method, path, timestamp, nonce and body, not the host, so the same signed
request is valid on either domain.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp

from payflow import logs

log = logs.get_logger(__name__)
T = TypeVar("T")

# A primary that could not be reached is skipped for this long; then one call tries it again.
BREAKER_COOLDOWN = 30.0
# What says "this domain did not answer": no connection, a dropped one, or no answer in time. Any HTTP status,
# 5xx included, is an answer: WeChat's backup domain is for an unreachable primary, not a failing one.
UNREACHABLE: tuple[type[BaseException], ...] = (TimeoutError, aiohttp.ClientConnectionError)
# A call its caller gave up on (cancelled: a payer's deadline, PAYFLOW_WECHAT_TIMEOUT, can end before the call's
# own timeout) after waiting this long for the primary counts as the primary not answering.
GAVE_UP_AFTER = 1.0


class Breaker:
    """Open after the primary could not be reached: calls go to the backup first for `cooldown` seconds, so a
    dead primary costs one call its timeout, not every call. When the cooldown is over, the next call tries
    the primary again (half-open) while the others keep to the backup for another cooldown; the primary
    answering closes the breaker, failing again re-opens it."""

    def __init__(self, cooldown: float = BREAKER_COOLDOWN, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown = cooldown
        self._clock = clock
        self._until: float | None = None  # by `clock`; None: closed

    @property
    def is_open(self) -> bool:
        return self._until is not None

    def now(self) -> float:
        return self._clock()

    def skip_primary(self) -> bool:
        """Whether this call should try the backup first. At most one call per cooldown probes the primary."""
        if self._until is None:
            return False
        now = self._clock()
        if now < self._until:
            return True
        self._until = now + self.cooldown  # this call is the probe; the next ones stay on the backup meanwhile
        return False

    def primary_failed(self) -> bool:
        """Open (again) from now; True when it was closed."""
        was_closed = self._until is None
        self._until = self._clock() + self.cooldown
        return was_closed

    def primary_answered(self) -> bool:
        """Close; True when it was open."""
        was_open = self._until is not None
        self._until = None
        return was_open


class Domains:
    """One client's WeChat API domains: the primary, the backup (None: no failover) and the breaker."""

    def __init__(self, primary: str, backup: str | None = None, breaker: Breaker | None = None) -> None:
        self.primary = primary.rstrip("/")
        self.backup = backup.rstrip("/") if backup else None
        self.breaker = breaker or Breaker()

    def order(self) -> tuple[str, ...]:
        if self.backup is None:
            return (self.primary,)
        if self.breaker.skip_primary():
            # The backup first, but the primary still after it: with both unreachable, the primary may be back.
            return (self.backup, self.primary)
        return (self.primary, self.backup)

    def label(self, domain: str) -> str:
        """`primary`, `backup` or `other` (a bill download URL elsewhere): the metrics label, never a host."""
        return "primary" if domain == self.primary else "backup" if domain == self.backup else "other"

    async def call(self, send: Callable[[str], Awaitable[T]], *, endpoint: str,
                   order: tuple[str, ...] | None = None) -> T:
        """`send(domain)` on each domain of `order` (default: `order()`) until one answers; an unreachable
        domain's error is re-raised only when it was the last. `send` must be safe to repeat on the next
        domain with the same bytes (the caller's comment says why it is)."""
        domains = order or self.order()
        for index, domain in enumerate(domains):
            started = self.breaker.now()
            try:
                result = await send(domain)
            except asyncio.CancelledError:
                # Without this, a primary that never answers would cost every payer its whole deadline: the
                # deadline cancels the call before the call's own timeout could say so.
                if self.breaker.now() - started >= GAVE_UP_AFTER:
                    self._failed(domain)
                raise
            except UNREACHABLE as exc:
                self._failed(domain)
                if index + 1 == len(domains):
                    raise
                log.warning("wechat.failed_over", endpoint=endpoint, unreachable=self.label(domain),
                            to=self.label(domains[index + 1]), error=type(exc).__name__)
                continue
            self._answered(domain)
            return result
        raise AssertionError("unreachable: the last domain returns or raises")

    def _failed(self, domain: str) -> None:
        if domain == self.primary and self.backup is not None and self.breaker.primary_failed():
            log.warning("wechat.breaker_opened", cooldown=self.breaker.cooldown)

    def _answered(self, domain: str) -> None:
        if domain == self.primary and self.breaker.primary_answered():
            log.info("wechat.breaker_closed")
