"""Cost of one `PaymentStore.transition()` (CAS update + event row, one durable commit) on SQLite.

    python bench/transition_cost.py [--payments N] [--quick] [--json FILE]

Measures sequential transitions (one caller: pure commit latency), 64 concurrent callers (throughput
through the single writer), and 64 concurrent notification decisions (`confirm_paid` with its
notification row: the store and service half of the notify path, without HTTP or crypto), on a temporary
database in WAL with synchronous=FULL. "cpu us" is the process's CPU time (event loop and writer thread)
per transition: steadier than the rate on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from payflow import models  # noqa: E402
from payflow.service import PaymentService  # noqa: E402
from payflow.settings import Settings  # noqa: E402
from payflow.states import Source, State, Trigger  # noqa: E402
from payflow.store import PaymentStore, open_store  # noqa: E402
from payflow.wechat.api import Transaction  # noqa: E402

T0 = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)


def _payment(i: int) -> models.Payment:
    return models.Payment(
        out_trade_no=f"B{i:012d}", order_id=f"bench-{i}", amount=100, description="bench", openid="o",
        state=State.CREATED, version=1, created_at=T0, updated_at=T0, expires_at=T0 + dt.timedelta(hours=2),
        event_id=f"evt_{i}", next_attempt_at=T0,
    )


async def _seed(store: PaymentStore, n: int, offset: int) -> list[models.Payment]:
    return [await store.create(_payment(offset + i), source=Source.API, detail={}) for i in range(n)]


async def _prepay(store: PaymentStore, payment: models.Payment) -> float:
    start = time.perf_counter()
    await store.transition(payment, State.PREPAID, Trigger.PREPAY, source=Source.API, at=T0,
                           detail={"prepay_id": "wx"}, changes={"prepay_id": "wx", "next_attempt_at": T0})
    return time.perf_counter() - start


class _NoForward(PaymentService):
    def forward_soon(self, payment: models.Payment) -> None:
        """The forward to the backend is not what this measures."""


def _notification(i: int, at: dt.datetime) -> tuple[Transaction, models.Notification]:
    no = f"B{i:012d}"
    txn = Transaction(out_trade_no=no, trade_state="SUCCESS", transaction_id=f"4200{i:024d}", amount=100,
                      payer_total=100, success_time=at, mchid="bench-mch", appid="bench-app")
    resource = {"out_trade_no": no, "transaction_id": txn.transaction_id, "trade_state": "SUCCESS",
                "amount": {"total": 100, "payer_total": 100, "currency": "CNY"}}
    return txn, models.Notification(f"bench-{i}", at, "TRANSACTION.SUCCESS", no, "", resource, json.dumps(resource))


@dataclasses.dataclass
class Row:
    mode: str
    transitions: int
    seconds: float
    per_second: float
    p50_ms: float
    p99_ms: float
    cpu_us: float


def _row(mode: str, latencies: list[float], seconds: float, cpu_seconds: float) -> Row:
    ordered = sorted(latencies)
    return Row(mode, len(ordered), round(seconds, 3), round(len(ordered) / seconds, 1),
               round(statistics.median(ordered) * 1000, 3), round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 3),
               round(cpu_seconds / len(ordered) * 1e6, 1))


async def _timed(calls: list[Any]) -> tuple[list[float], float, float]:
    """Run the awaitables 64 at a time; their latencies, the wall time and the process CPU time."""
    gate = asyncio.Semaphore(64)

    async def one(call: Any) -> float:
        async with gate:
            start = time.perf_counter()
            await call
            return time.perf_counter() - start

    start, cpu = time.perf_counter(), time.process_time()
    latencies = list(await asyncio.gather(*(one(c) for c in calls)))
    return latencies, time.perf_counter() - start, time.process_time() - cpu


async def run(n: int) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        store = await open_store(f"sqlite:///{pathlib.Path(tmp) / 'bench.db'}")
        try:
            rows = []
            batch = await _seed(store, n, 0)
            start, cpu = time.perf_counter(), time.process_time()
            latencies = [await _prepay(store, p) for p in batch]
            rows.append(_row("sequential (1 caller)", latencies, time.perf_counter() - start,
                             time.process_time() - cpu))

            batch = await _seed(store, n, n)
            latencies, seconds, cpu_seconds = await _timed([_prepay(store, p) for p in batch])
            rows.append(_row("concurrent (64 callers)", latencies, seconds, cpu_seconds))

            # The same payments, now prepaid, each paid by its notification.
            service = _NoForward(store, Settings(wechat_mchid="bench-mch", wechat_appid="bench-app"))
            notes = [_notification(n + i, T0) for i in range(n)]
            latencies, seconds, cpu_seconds = await _timed(
                [service.confirm_paid(txn, Source.NOTIFY, notification=row) for txn, row in notes])
            paid = await store.count_by_state()
            assert paid.get(State.NOTIFIED) == n, paid  # every one accepted, none refused
            rows.append(_row("notifications (64, decide)", latencies, seconds, cpu_seconds))
            return rows
        finally:
            await store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payments", type=int, default=5000)
    parser.add_argument("--quick", action="store_true", help="500 payments (well under 60 s)")
    parser.add_argument("--json", type=pathlib.Path, default=pathlib.Path("bench/results/transition_cost.json"))
    args = parser.parse_args()
    n = 500 if args.quick else args.payments
    rows = asyncio.run(run(n))
    print(f"{'mode':<27}{'n':>7}{'s':>9}{'per s':>10}{'p50 ms':>9}{'p99 ms':>9}{'cpu us':>9}")
    for r in rows:
        print(f"{r.mode:<27}{r.transitions:>7}{r.seconds:>9}{r.per_second:>10}{r.p50_ms:>9}{r.p99_ms:>9}"
              f"{r.cpu_us:>9}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
