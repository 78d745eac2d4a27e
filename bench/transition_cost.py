"""Cost of one `PaymentStore.transition()` (CAS update + event row, one durable commit) on SQLite.

    python bench/transition_cost.py [--payments N] [--quick] [--json FILE]

Measures sequential transitions (one caller: pure commit latency) and 64 concurrent callers
(throughput through the single writer) on a temporary database in WAL with synchronous=FULL.
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

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from payflow import models  # noqa: E402
from payflow.states import Source, State, Trigger  # noqa: E402
from payflow.store import PaymentStore, open_store  # noqa: E402

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


@dataclasses.dataclass
class Row:
    mode: str
    transitions: int
    seconds: float
    per_second: float
    p50_ms: float
    p99_ms: float


def _row(mode: str, latencies: list[float], seconds: float) -> Row:
    ordered = sorted(latencies)
    return Row(mode, len(ordered), round(seconds, 3), round(len(ordered) / seconds, 1),
               round(statistics.median(ordered) * 1000, 3), round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 3))


async def run(n: int) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        store = await open_store(f"sqlite:///{pathlib.Path(tmp) / 'bench.db'}")
        try:
            rows = []
            batch = await _seed(store, n, 0)
            start = time.perf_counter()
            latencies = [await _prepay(store, p) for p in batch]
            rows.append(_row("sequential (1 caller)", latencies, time.perf_counter() - start))

            batch = await _seed(store, n, n)
            gate = asyncio.Semaphore(64)

            async def one(p: models.Payment) -> float:
                async with gate:
                    return await _prepay(store, p)

            start = time.perf_counter()
            latencies = list(await asyncio.gather(*(one(p) for p in batch)))
            rows.append(_row("concurrent (64 callers)", latencies, time.perf_counter() - start))
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
    print(f"{'mode':<26}{'n':>7}{'s':>9}{'per s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for r in rows:
        print(f"{r.mode:<26}{r.transitions:>7}{r.seconds:>9}{r.per_second:>10}{r.p50_ms:>9}{r.p99_ms:>9}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
