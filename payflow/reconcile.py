"""Daily trade-bill reconciliation: download and check the bill, match it line by line, heal what the
notification and query paths missed, and record every discrepancy (WECHATPAY_V3 §8, DESIGN §6)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
from typing import Any, Protocol

from payflow import errors, logs, models, ratelimit
from payflow.clock import SHANGHAI
from payflow.ratelimit import Priority
from payflow.service import PaymentService
from payflow.states import Source, State
from payflow.states import refunds as refund_states
from payflow.wechat.api import RefundAnswer, Transaction
from payflow.wechat.bill import BillFormatError, BillLine, parse_trade_bill
from payflow.wechat.client import BillInfo

log = logs.get_logger(__name__)

# Cross-midnight payments appear in the next day's bill; only after this many days is a paid payment
# that no bill listed a BANK_MISS.
BANK_MISS_AFTER_DAYS = 3

MATCH_CONCURRENCY = 64


class BillSource(Protocol):
    async def trade_bill(self, bill_date: dt.date, *, gzip: bool = False) -> BillInfo: ...

    async def download_bill(self, info: BillInfo) -> bytes: ...


class ReconcileFailed(errors.PayflowError):
    """The bill could not be fetched, verified or parsed; a failed run was recorded."""

    code = "reconcile_failed"


@dataclasses.dataclass(frozen=True)
class Report:
    run: models.ReconciliationRun
    discrepancies: list[models.Discrepancy]

    @property
    def clean(self) -> bool:
        return not self.discrepancies

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run.view(), "discrepancies": [d.view() for d in self.discrepancies]}


def day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """An Asia/Shanghai calendar day as [start, end) instants."""
    start = dt.datetime.combine(day, dt.time(), SHANGHAI)
    return start, start + dt.timedelta(days=1)


class Reconciler:
    def __init__(self, service: PaymentService, bills: BillSource) -> None:
        self.service = service
        self.store = service.store
        self.bills = bills

    async def run(self, bill_date: dt.date) -> Report:
        """Reconcile one day. Idempotent: a re-run decides nothing twice and records nothing twice."""
        run_id = await self.store.start_reconciliation(bill_date, self.service.now())
        if run_id is None:
            raise ReconcileFailed(f"a reconciliation of {bill_date} is already running (another replica?)")
        with logs.bound(bill_date=bill_date.isoformat(), run_id=run_id), ratelimit.priority(Priority.BACKGROUND):
            try:
                info = await self.bills.trade_bill(bill_date, gzip=True)
                data = await self.bills.download_bill(info)
                # ~1 s per 100k lines of pure Python: off the event loop, so serve keeps answering meanwhile.
                bill = await asyncio.to_thread(parse_trade_bill, data)
                counts = await self._match(bill_date, bill.lines)
                found = await self.store.discrepancies(bill_date)
            except (errors.WechatError, BillFormatError) as exc:
                await self._failed(run_id, str(exc))
                raise ReconcileFailed(f"reconciliation of {bill_date} failed: {exc}") from exc
            except BaseException as exc:
                # Whatever else stopped it (the store, a cancel), the run must not stay `running`: that would
                # refuse every re-run of the day as "already running" until it went stale. What was matched
                # is committed, and a re-run picks up the rest.
                await self._failed(run_id, f"{type(exc).__name__}: {exc}")
                raise
            status = "discrepancies" if found else "clean"
            await self.store.finish_reconciliation(run_id, status=status, counts=counts, at=self.service.now())
            log.info("reconcile.finished", status=status, counts=counts, discrepancies=len(found))
        [run] = [r for r in await self.store.reconciliation_runs(bill_date) if r.id == run_id]
        return Report(run, found)

    async def _failed(self, run_id: int, error: str) -> None:
        """Record the run as failed, even while being cancelled; if the store is what failed, the run goes
        stale instead (RUN_STALE_AFTER) and the original error is the one raised."""
        log.error("reconcile.failed", error=error)
        finish = self.store.finish_reconciliation(run_id, status="failed", counts={}, at=self.service.now(),
                                                  error=error)
        with contextlib.suppress(Exception):
            await asyncio.shield(finish)

    async def _match(self, bill_date: dt.date, lines: tuple[BillLine, ...]) -> dict[str, int]:
        counts: collections.Counter[str] = collections.Counter(lines=len(lines))
        successes = [line for line in lines if line.trade_state == "SUCCESS"]
        await self.store.mark_billed(bill_date, [line.out_trade_no for line in successes])
        # REFUND lines first: a refund the bill heals settles its payment (`refunded`) before the payment's SUCCESS
        # line is matched, and one payflow never asked for parks its payment before that line could reconcile it.
        for line in lines:
            if line.trade_state == "REFUND":
                counts[await self._refund(bill_date, line)] += 1
        gate = asyncio.Semaphore(MATCH_CONCURRENCY)

        async def match(line: BillLine) -> None:
            async with gate:
                counts[await self._success(bill_date, line)] += 1

        # Lines are independent (one payment each); matching them concurrently lets their transitions
        # share commits instead of paying one fsync per line.
        await asyncio.gather(*(match(line) for line in successes))
        held, missing = await self._unbilled(bill_date)
        counts["held_for_next_bills"] = held
        counts["bank_miss"] = missing
        counts["refund_missing"] = await self._unbilled_refunds(bill_date)
        return dict(counts)

    async def _success(self, bill_date: dt.date, line: BillLine) -> str:
        payment = await self.store.get(line.out_trade_no)
        facts = {"transaction_id": line.transaction_id, "billed_amount": line.order_amount,
                 "trade_time": line.trade_time.isoformat()}
        if payment is None:
            await self._discrepancy(bill_date, line.out_trade_no, "PLATFORM_MISS", facts)
            return "platform_miss"
        if payment.state is State.RECONCILED:
            return "already_reconciled"
        if payment.state is State.REFUNDED:
            return "refunded"  # paid, then refunded in full: settled business, nothing left to decide
        if line.order_amount != payment.amount:
            direction = "over" if line.order_amount > payment.amount else "short"
            detail = {**facts, "expected_amount": payment.amount, "direction": direction}
            await self._discrepancy(bill_date, payment.out_trade_no, "AMOUNT_MISMATCH", detail)
            if payment.state is not State.NEEDS_REVIEW:
                await self.service.flag(payment, "amount_mismatch", Source.BILL, detail)
            return "amount_mismatch"
        if payment.state is State.SYNCED:
            await self.service.mark_reconciled(payment, line.order_amount, facts)
            await self._settle(payment.out_trade_no)
            return "reconciled"
        if payment.state in (State.CREATED, State.PREPAID, State.CLOSED):
            # The bill is the final word: a payment whose notification and queries were all lost heals here.
            outcome = await self.service.confirm_paid(self._transaction(line), Source.BILL)
            if outcome == "paid_after_close":
                await self._discrepancy(bill_date, payment.out_trade_no, "PAID_AFTER_CLOSE", facts)
            return "healed" if outcome == "accepted" else outcome
        if payment.state is State.NOTIFIED:
            return "pending_forward"  # the forward path owns it; next day's run reconciles it
        return "in_review"

    async def _refund(self, bill_date: dt.date, line: BillLine) -> str:
        """Match a REFUND line to the refund record of its out_refund_no; heal a refund whose news was lost."""
        refund = await self.store.get_refund(line.out_refund_no)
        facts = {"out_refund_no": line.out_refund_no, "refund_id": line.refund_id,
                 "refund_amount": line.refund_amount, "refund_status": line.refund_status,
                 "transaction_id": line.transaction_id}
        if refund is None:
            # Made outside payflow (the merchant platform, say): nobody here asked for this money to leave.
            await self._discrepancy(bill_date, line.out_trade_no, "REFUND_UNKNOWN", facts)
            payment = await self.store.get(line.out_trade_no)
            if payment is not None:
                await self.service.flag(payment, "refund_seen", Source.BILL, facts)
            return "refund_unknown"
        wrong = [name for name, ours, theirs in (("out_trade_no", refund.out_trade_no, line.out_trade_no),
                                                 ("amount", refund.amount, line.refund_amount)) if ours != theirs]
        if refund.refund_id is not None and refund.refund_id != line.refund_id:
            wrong.insert(1, "refund_id")  # one WeChat has not named yet (still `created`) is named by the bill
        if not wrong and refund.state in refund_states.UNREFUNDED and line.refund_status == "SUCCESS":
            wrong = ["state"]  # payflow (and the backend) hold it as not refunded; WeChat refunded it
        if wrong:
            await self._discrepancy(bill_date, line.out_trade_no, "REFUND_MISMATCH", {
                **facts, "mismatched": wrong, "expected_out_trade_no": refund.out_trade_no,
                "expected_refund_id": refund.refund_id, "expected_amount": refund.amount,
                "state": refund.state.value})
            return "refund_mismatch"
        await self.store.mark_refund_billed(refund.out_refund_no, bill_date)
        if refund.state in refund_states.REFUNDED or line.refund_status != "SUCCESS":
            return "refund_matched"
        # The bill is the final word here too: a refund whose notification and queries were all lost heals.
        answer = RefundAnswer(out_refund_no=refund.out_refund_no, status="SUCCESS", out_trade_no=line.out_trade_no,
                              refund_id=line.refund_id, amount=line.refund_amount, success_time=line.trade_time)
        try:
            healed = await self.service.refunding.apply_answer(refund, answer, Source.BILL)
        except errors.StoreUnavailable:
            raise  # the run fails and a re-run heals it
        except errors.PayflowError as exc:
            log.error("reconcile.refund_heal_failed", out_refund_no=refund.out_refund_no, error=str(exc))
            return "refund_heal_failed"
        return "refund_healed" if healed.state in refund_states.REFUNDED else "refund_matched"

    async def _settle(self, out_trade_no: str) -> None:
        """A reconciled payment whose refunds reached its amount becomes `refunded`."""
        try:
            await self.service.refunding.settle_payment(out_trade_no)
        except errors.StoreUnavailable:
            raise
        except errors.PayflowError as exc:  # e.g. a concurrent writer won: the refund path settles it
            log.warning("reconcile.settle_failed", out_trade_no=out_trade_no, error=str(exc))

    async def _unbilled(self, bill_date: dt.date) -> tuple[int, int]:
        """Payments paid locally but in no bill: held while a later bill may still list them, then BANK_MISS."""
        start, end = day_bounds(bill_date)
        recent = [p for p in await self.store.paid_between(start, end) if p.paid]
        held = len(recent) - len(await self.store.billed(p.out_trade_no for p in recent))
        old_day = bill_date - dt.timedelta(days=BANK_MISS_AFTER_DAYS)
        old_start, old_end = day_bounds(old_day)
        old = [p for p in await self.store.paid_between(old_start, old_end) if p.paid]
        billed = await self.store.billed(p.out_trade_no for p in old)
        missing = [p for p in old if p.out_trade_no not in billed]
        for payment in missing:
            await self._discrepancy(bill_date, payment.out_trade_no, "BANK_MISS", {
                "paid_day": old_day.isoformat(), "transaction_id": payment.transaction_id,
                "amount": payment.paid_amount})
        return held, len(missing)

    async def _unbilled_refunds(self, bill_date: dt.date) -> int:
        """Refunds that succeeded BANK_MISS_AFTER_DAYS before `bill_date` and that no bill listed: REFUND_MISSING."""
        old_day = bill_date - dt.timedelta(days=BANK_MISS_AFTER_DAYS)
        start, end = day_bounds(old_day)
        missing = [r for r in await self.store.refunds_succeeded_between(start, end) if r.billed_on is None]
        for refund in missing:
            await self._discrepancy(bill_date, refund.out_trade_no, "REFUND_MISSING", {
                "out_refund_no": refund.out_refund_no, "refund_id": refund.refund_id, "amount": refund.amount,
                "succeeded_day": old_day.isoformat()})
        return len(missing)

    async def _discrepancy(self, bill_date: dt.date, out_trade_no: str, category: str, detail: dict[str, Any]) -> None:
        new = await self.store.add_discrepancy(models.Discrepancy(bill_date, out_trade_no, category, detail,
                                                                  self.service.now()))
        if new:
            self.service.metrics.discrepancies.labels(category=category).inc()
            log.error("alert.reconciliation_discrepancy", category=category, out_trade_no=out_trade_no, **detail)

    def _transaction(self, line: BillLine) -> Transaction:
        settings = self.service.settings
        return Transaction(out_trade_no=line.out_trade_no, trade_state="SUCCESS", transaction_id=line.transaction_id,
                           amount=line.order_amount, payer_total=line.settlement_total, success_time=line.trade_time,
                           mchid=settings.wechat_mchid, appid=settings.wechat_appid)


class DailySchedule:
    """Runs yesterday's reconciliation once a day at `at` (Asia/Shanghai), catching up after downtime."""

    def __init__(self, reconciler: Reconciler, at: dt.time) -> None:
        self.reconciler = reconciler
        self.at = at

    def due_date(self, now: dt.datetime) -> dt.date | None:
        local = now.astimezone(SHANGHAI)
        if local.time() < self.at:
            return None
        return local.date() - dt.timedelta(days=1)

    async def run_once(self) -> Report | None:
        day = self.due_date(self.reconciler.service.now())
        if day is None:
            return None
        runs = await self.reconciler.store.reconciliation_runs(day)
        if any(r.status in ("clean", "discrepancies") for r in runs):
            return None
        try:
            return await self.reconciler.run(day)
        except ReconcileFailed:
            return None  # recorded and alerted; tried again on the next wake-up

    async def run(self, stop: asyncio.Event, *, every: float = 600.0) -> None:
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception as exc:  # noqa: BLE001 — the store may be briefly unavailable
                log.error("reconcile.schedule_failed", error=repr(exc))
            try:
                await asyncio.wait_for(stop.wait(), timeout=every)
            except TimeoutError:
                pass
