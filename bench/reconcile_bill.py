"""Time to reconcile one day's ALL trade bill of N lines against a store holding N synced payments.

    python bench/reconcile_bill.py [--lines N] [--quick] [--json FILE]

The bill comes from the WeChat simulator's own writer and is handed to the Reconciler in memory (no
HTTP, no SHA1 round trip); the store is SQLite in WAL with synchronous=FULL on a temporary file. The
payments are seeded with one INSERT per row in one transaction (seeding 100k payments through the
service would take minutes and is not what is measured). Every line then costs a read and one durable
transition (synced → reconciled with its event).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench.bill_parse import DAY, _orders  # noqa: E402
from payflow import logs  # noqa: E402
from payflow.reconcile import Reconciler  # noqa: E402
from payflow.service import PaymentService  # noqa: E402
from payflow.settings import Settings  # noqa: E402
from payflow.store.sqlite import SqliteStore  # noqa: E402
from payflow.wechat.client import BillInfo  # noqa: E402
from simulator.wechat import bills  # noqa: E402


class InMemoryBills:
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def trade_bill(self, bill_date: dt.date, *, gzip: bool = False) -> BillInfo:
        return BillInfo(bill_date, "SHA1", "", "memory", False)

    async def download_bill(self, info: BillInfo) -> bytes:
        return self.data


@dataclasses.dataclass
class Row:
    lines: int
    seed_seconds: float
    reconcile_seconds: float
    lines_per_second: float
    reconciled: int


async def run(n_lines: int) -> Row:
    orders = _orders(n_lines)
    for order in orders:
        order.refunds.clear()  # a clean day: every line is a payment to reconcile
    data = bills.render(orders, DAY)
    with tempfile.TemporaryDirectory() as tmp:
        store = await SqliteStore.open(str(pathlib.Path(tmp) / "bench.db"))
        try:
            started = time.perf_counter()
            now = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
            await store.writes.submit(lambda db: db.executemany(
                    "INSERT INTO payments (out_trade_no, order_id, amount, currency, description, openid, attach, "
                    "state, version, event_id, transaction_id, paid_at, paid_amount, expires_at, attempts, "
                    "created_at, updated_at) VALUES (?, ?, ?, 'CNY', ?, ?, ?, 'synced', 3, ?, ?, ?, ?, ?, 0, ?, ?)",
                    [(o.out_trade_no, f"order-{o.out_trade_no}", o.total, o.description, o.openid, o.attach,
                      f"evt_{o.out_trade_no}", o.transaction_id,
                      o.success_time.astimezone(dt.UTC).isoformat(timespec="microseconds"),  # type: ignore[union-attr]
                      o.total, now, now, now) for o in orders]))
            seeded = time.perf_counter() - started
            settings = dataclasses.replace(Settings(), wechat_mchid="1230000109", wechat_appid="wxd678efh567hg6787")
            service = PaymentService(store, settings)
            started = time.perf_counter()
            report = await Reconciler(service, InMemoryBills(data)).run(DAY)
            seconds = time.perf_counter() - started
        finally:
            await store.close()
    assert report.clean and report.run.counts["reconciled"] == len(orders), report.run.counts
    return Row(len(orders), round(seeded, 2), round(seconds, 2), round(len(orders) / seconds), len(orders))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="10k lines")
    parser.add_argument("--json", type=pathlib.Path, default=pathlib.Path("bench/results/reconcile_bill.json"))
    args = parser.parse_args()
    logs.configure_logging("json", level="WARNING")  # one info line per transition would dominate the timing
    row = asyncio.run(run(10_000 if args.quick else args.lines))
    print(f"{'lines':>9}{'seed s':>9}{'reconcile s':>13}{'lines/s':>10}")
    print(f"{row.lines:>9}{row.seed_seconds:>9}{row.reconcile_seconds:>13}{row.lines_per_second:>10}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(dataclasses.asdict(row), indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
