"""The token bucket every outbound WeChat call draws from, served by priority: payers first.

Three classes of caller share WeChat's budget. A payer waiting for a prepay id or a close (`PAYER`) is
served first, and waits at most its own bound. A status poll (`READ`) never waits: if no token is free
right now, or a payer is waiting, it is refused at once and the poll answers the stored state. Background
work (`BACKGROUND`: sweeper queries, expiry closes, bills) only gets what payers leave, and gives up after
its bound (shorter than the sweeper's lease, so a claimed payment is never held by a wait). A refusal is
`Throttled`, a `WechatRetryable`: the caller's usual "try later" path.

The class comes from the caller's context (`with ratelimit.priority(Priority.BACKGROUND):`), so the
WeChat client's methods keep their signatures; payer-facing is the default.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import heapq
import itertools
import time
from collections.abc import Callable, Iterator, Mapping

from payflow import errors


class Priority(enum.IntEnum):
    PAYER = 0
    READ = 1
    BACKGROUND = 2


_PRIORITY: contextvars.ContextVar[Priority] = contextvars.ContextVar("wechat_priority", default=Priority.PAYER)


@contextlib.contextmanager
def priority(level: Priority) -> Iterator[None]:
    """WeChat calls made inside the block (and in tasks started from it) draw as `level`."""
    token = _PRIORITY.set(level)
    try:
        yield
    finally:
        _PRIORITY.reset(token)


def current_priority() -> Priority:
    return _PRIORITY.get()


class Throttled(errors.WechatRetryable):
    """No token within the caller's bound: nothing was sent to WeChat."""

    code = "wechat_throttled"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# How long each class may wait for a token by default (seconds); READ never waits.
DEFAULT_WAITS: Mapping[Priority, float] = {Priority.PAYER: 10.0, Priority.READ: 0.0, Priority.BACKGROUND: 30.0}

Timer = Callable[[float, Callable[[], None]], object]  # (delay, callback) → a handle; loop.call_later by default


class RateLimiter:
    """`rate` calls per second on average, bursts up to `burst`; `pause(s)` stops everyone for s seconds.

    Waiters queue by (priority, arrival); a token goes to the first of them. `monotonic` and `timer` are
    injectable so tests drive time by hand.
    """

    def __init__(
        self,
        rate: float,
        burst: int | None = None,
        *,
        waits: Mapping[Priority, float] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        timer: Timer | None = None,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(1, int(rate))
        self.waits = {**DEFAULT_WAITS, **(waits or {})}
        self._monotonic = monotonic
        self._timer = timer
        self._tokens = float(self.burst)
        self._updated = monotonic()
        self._paused_until = 0.0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []  # a heap of (priority, seq, future)
        self._seq = itertools.count()
        self._wakeup_at: float | None = None  # when the scheduled wake-up runs, if one is

    @property
    def paused_for(self) -> float:
        """Seconds left of the pause WeChat asked for (0 when none)."""
        return max(0.0, self._paused_until - self._monotonic())

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, future in self._waiters if not future.done())

    def pause(self, seconds: float) -> None:
        """After a 429 or FREQUENCY_LIMITED: nobody calls WeChat for `seconds`."""
        self._paused_until = max(self._paused_until, self._monotonic() + seconds)

    async def acquire(self, level: Priority | None = None) -> None:
        """Take a token as `level` (the context's priority when None), or raise `Throttled` once the
        class's wait bound has passed (at once for READ)."""
        level = current_priority() if level is None else level
        if self._take_now(level):
            return
        bound = self.waits[level]
        if bound <= 0:
            raise Throttled("WeChat's budget is spent for now; not asked", retry_after=self._next_token_in())
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (int(level), next(self._seq), future))
        self._schedule()
        try:
            async with asyncio.timeout(bound):
                await future
        except TimeoutError:
            if future.done() and not future.cancelled():
                return  # granted at the very moment the bound ran out: the token is ours
            future.cancel()
            raise Throttled(f"no WeChat budget within {bound:g}s; not asked",
                            retry_after=self._next_token_in()) from None
        except BaseException:
            if future.done() and not future.cancelled():
                self._tokens += 1  # granted, then the caller went away: give it back
                self._grant()
            future.cancel()
            raise

    def _take_now(self, level: Priority) -> bool:
        """A token without waiting, if nobody of this priority or higher waits for one."""
        self._refill()
        if self._monotonic() < self._paused_until or self._tokens < 1:
            return False
        if any(p <= level and not future.done() for p, _, future in self._waiters):
            return False
        self._tokens -= 1
        return True

    def _refill(self) -> None:
        now = self._monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def _next_token_in(self) -> float:
        self._refill()
        wait = max(0.0, (1 - self._tokens) / self.rate)
        return max(wait, self._paused_until - self._monotonic())

    def _grant(self) -> None:
        """Hand free tokens to the waiters in (priority, arrival) order; schedule the next wake-up."""
        self._refill()
        waiters = self._waiters
        while waiters and waiters[0][2].done():
            heapq.heappop(waiters)  # gave up or was cancelled
        while waiters and self._tokens >= 1 and self._monotonic() >= self._paused_until:
            _, _, future = heapq.heappop(waiters)
            if future.done():
                continue
            self._tokens -= 1
            future.set_result(None)
        if any(not future.done() for _, _, future in waiters):
            self._schedule()

    def _schedule(self) -> None:
        delay = self._next_token_in()
        at = self._monotonic() + delay
        if self._wakeup_at is not None and self._wakeup_at <= at:
            return  # a wake-up at least this early is already scheduled
        self._wakeup_at = at
        timer = self._timer or asyncio.get_running_loop().call_later
        timer(delay, self._wake)

    def _wake(self) -> None:
        self._wakeup_at = None
        self._grant()


# WeChat limits each API separately, per merchant (shared by every system calling with that mchid). Its
# own figures: about 500 JSAPI orders/s (WECHATPAY_V3 §4); for the cross-border API it publishes 600/s for
# ordering, 1,800/s for queries, 150/s for refunds and 300/s for refund queries. payflow's defaults take a
# fifth or less of those, leaving the merchant's other systems the rest; PAYFLOW_WECHAT_BUDGETS overrides.
DEFAULT_BUDGETS: Mapping[str, float] = {
    "jsapi": 100.0,         # place order (JSAPI and mini programs): payers only
    "native": 100.0,        # each product's place-order API is limited on its own
    "h5": 100.0,
    "app": 100.0,
    "query": 300.0,         # status polls (READ) and the sweeper's queries (BACKGROUND)
    "close": 100.0,         # the payer's close (PAYER) and expiry closes (BACKGROUND)
    "refund": 150.0,        # apply for a refund (WeChat documents 150 QPS): the API, operators, the sweeper
    "refund_query": 300.0,  # refund reads (READ) and the sweeper's refund queries (BACKGROUND)
    "tradebill": 5.0,       # once a day per bill, plus retries
    "billdownload": 5.0,
}


class Budgets:
    """One `RateLimiter` per WeChat API, each served by priority: what one API's callers spend (a sweep
    storm of queries) never delays another's (placement). An endpoint without a budget of its own gets
    `default` calls per second. A 429 from WeChat pauses only the API that answered it."""

    def __init__(
        self,
        rates: Mapping[str, float] | None = None,
        *,
        default: float = 50.0,
        waits: Mapping[Priority, float] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        timer: Timer | None = None,
    ) -> None:
        self.rates = {**DEFAULT_BUDGETS, **(rates or {})}
        self.default = default
        self._waits, self._monotonic, self._timer = waits, monotonic, timer
        self._shared: RateLimiter | None = None
        self._limiters: dict[str, RateLimiter] = {}

    @classmethod
    def shared(cls, limiter: RateLimiter) -> Budgets:
        """Every endpoint draws from the one `limiter` (tests; a single budget for everything)."""
        budgets = cls()
        budgets._shared = limiter
        return budgets

    def limiter(self, endpoint: str) -> RateLimiter:
        if self._shared is not None:
            return self._shared
        found = self._limiters.get(endpoint)
        if found is None:
            found = self._limiters[endpoint] = RateLimiter(
                self.rates.get(endpoint, self.default), waits=self._waits, monotonic=self._monotonic,
                timer=self._timer)
        return found

    async def acquire(self, endpoint: str, level: Priority | None = None) -> None:
        await self.limiter(endpoint).acquire(level)

    def pause(self, endpoint: str, seconds: float) -> None:
        self.limiter(endpoint).pause(seconds)
