"""The sweeper: claims due payments with a lease and re-drives each (query, re-place, close, forward).

`run_once()` is one pass (tests call it); `run(stop)` repeats passes until `stop` is set.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time

from payflow import logs, models, ratelimit
from payflow.ratelimit import Priority
from payflow.service import PaymentService

log = logs.get_logger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class PassReport:
    claimed: int
    outcomes: dict[str, int]
    failed: int
    seconds: float


class Sweeper:
    def __init__(self, service: PaymentService, *, batch: int | None = None, concurrency: int | None = None,
                 interval: float | None = None, lease: float | None = None) -> None:
        settings = service.settings
        self.service = service
        self.batch = batch or settings.sweep_batch
        self.concurrency = concurrency or settings.sweep_concurrency
        self.interval = interval if interval is not None else settings.sweep_interval
        self.lease = lease or settings.lease

    async def run_once(self, stop: asyncio.Event | None = None) -> PassReport:
        """Claim what is due now and work it with bounded concurrency; one failure never ends the pass.

        Once `stop` is set, payments not yet started are left alone: still leased, they are due again
        when the lease runs out, so shutting down never waits for a whole pass.
        """
        started = time.perf_counter()
        claimed = await self.service.store.claim_due(self.service.now(), self.batch, self.lease)
        gate = asyncio.Semaphore(self.concurrency)
        outcomes: collections.Counter[str] = collections.Counter()

        async def work(payment: models.Payment) -> None:
            async with gate:
                if stop is not None and stop.is_set():
                    outcomes["left_for_later"] += 1
                    return
                try:
                    with ratelimit.priority(Priority.BACKGROUND):  # payers' WeChat calls go first
                        outcomes[await self.service.sweep(payment)] += 1
                except Exception as exc:  # noqa: BLE001 — logged with context; the lease makes it due again
                    outcomes["failed"] += 1
                    log.error("sweep.payment_failed", out_trade_no=payment.out_trade_no,
                              state=payment.state.value, error=repr(exc), exc_info=True)

        await asyncio.gather(*(work(p) for p in claimed))
        report = PassReport(len(claimed), dict(outcomes), outcomes.get("failed", 0),
                            round(time.perf_counter() - started, 4))
        self.service.metrics.sweep_seconds.observe(report.seconds)
        if claimed:
            log.info("sweep.pass_finished", claimed=report.claimed, outcomes=report.outcomes, seconds=report.seconds)
        return report

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass until `stop` is set: at once while passes come back full, else every `interval`."""
        log.info("sweep.started", interval=self.interval, batch=self.batch)
        while not stop.is_set():
            try:
                report = await self.run_once(stop)
                full = report.claimed >= self.batch
            except Exception as exc:  # noqa: BLE001 — e.g. the store is briefly unavailable; try again later
                log.error("sweep.pass_failed", error=repr(exc))
                full = False
            if not full:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self.interval)
                except TimeoutError:
                    pass
        log.info("sweep.stopped")
