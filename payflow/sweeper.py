"""The sweeper: claims due payments and refunds with a lease and re-drives each (query, re-place, close,
forward; re-submit, query and forward a refund), and re-drives the automatic refunds.

`run_once()` is one pass (tests call it); `run(stop)` repeats passes until `stop` is set.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import time

from payflow import logs, models, ratelimit
from payflow.ratelimit import Priority
from payflow.service import PaymentService

log = logs.get_logger(__name__)

AUTO_REFUNDS_EVERY = 60.0  # seconds between re-drives of PAYFLOW_AUTO_REFUND over the parked payments


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
        self._auto_refunds_at: dt.datetime | None = None  # the last re-drive of automatic refunds

    async def run_once(self, stop: asyncio.Event | None = None) -> PassReport:
        """Claim what is due now and work it with bounded concurrency; one failure never ends the pass.

        Once `stop` is set, payments not yet started are left alone: still leased, they are due again
        when the lease runs out, so shutting down never waits for a whole pass.
        """
        started = time.perf_counter()
        service = self.service
        now = service.now()
        claimed = await service.store.claim_due(now, self.batch, self.lease)
        refunds = await service.store.claim_due_refunds(now, self.batch, self.lease)
        gate = asyncio.Semaphore(self.concurrency)
        outcomes: collections.Counter[str] = collections.Counter()

        async def work(record: models.Payment | models.Refund) -> None:
            async with gate:
                if stop is not None and stop.is_set():
                    outcomes["left_for_later"] += 1
                    return
                try:
                    with ratelimit.priority(Priority.BACKGROUND):  # payers' WeChat calls go first
                        if isinstance(record, models.Refund):
                            outcomes[await service.sweep_refund(record)] += 1
                        else:
                            outcomes[await service.sweep(record)] += 1
                except Exception as exc:  # noqa: BLE001 — logged with context; the lease makes it due again
                    outcomes["failed"] += 1
                    log.error("sweep.record_failed", out_trade_no=record.out_trade_no,
                              out_refund_no=getattr(record, "out_refund_no", None),
                              state=record.state.value, error=repr(exc), exc_info=True)

        await asyncio.gather(*(work(p) for p in claimed), *(work(r) for r in refunds))
        if self._auto_refunds_due(now):
            try:
                made = await service.refunding.auto_refunds()
            except Exception as exc:  # noqa: BLE001 — e.g. the store is briefly unavailable; next time
                log.error("sweep.auto_refunds_failed", error=repr(exc))
            else:
                if made:
                    outcomes["auto_refund"] += made
        report = PassReport(len(claimed) + len(refunds), dict(outcomes), outcomes.get("failed", 0),
                            round(time.perf_counter() - started, 4))
        self.service.metrics.sweep_seconds.observe(report.seconds)
        if report.claimed:
            log.info("sweep.pass_finished", claimed=report.claimed, outcomes=report.outcomes, seconds=report.seconds)
        return report

    def _auto_refunds_due(self, now: dt.datetime) -> bool:
        """The automatic refunds' re-drive reads every parked payment: once a minute at most."""
        if not self.service.settings.auto_refund:
            return False
        last = self._auto_refunds_at
        if last is not None and 0 <= (now - last).total_seconds() < AUTO_REFUNDS_EVERY:
            return False
        self._auto_refunds_at = now
        return True

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
