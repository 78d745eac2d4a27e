"""Cost of `parse_trade_bill()` on a large ALL trade bill written by the WeChat simulator's own bill writer.

    python bench/bill_parse.py [--lines N] [--quick] [--json FILE]

Builds N detail lines in memory (one refund line per 10 payments, amounts and descriptions varied so the
amount cache does not see one value only), then reports the best of 3 parses.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from payflow.clock import SHANGHAI  # noqa: E402
from payflow.wechat.bill import parse_trade_bill  # noqa: E402
from simulator.wechat import bills  # noqa: E402
from simulator.wechat.ledger import Order, Refund  # noqa: E402

DAY = dt.date(2026, 11, 26)
REPEATS = 3
MINUTE = dt.timedelta(minutes=1)


def _orders(n_lines: int) -> list[Order]:
    """Orders paid on DAY whose payment and refund lines number `n_lines` in all."""
    start = dt.datetime.combine(DAY, dt.time(), SHANGHAI)
    orders: list[Order] = []
    lines = 0
    while lines < n_lines:
        i = len(orders)
        paid_at = start + dt.timedelta(seconds=i * 86_000 // max(n_lines, 1))
        amount = 1 + (i * 7919) % 500_000
        order = Order(
            out_trade_no=f"B{i:020d}", appid="wxd678efh567hg6787", mchid="1230000109", description=f"商品-{i % 977}",
            total=amount, openid=f"oUpF8uMuAJO_M2pxb1Q9zN{i:06d}", notify_url=None, attach=f"cart-{i % 89}",
            created=paid_at, time_expire=paid_at + dt.timedelta(hours=2), params=None,
            transaction_id=f"4200{i:024d}", success_time=paid_at, paid_amount=amount,
        )
        lines += 1
        if i % 10 == 9 and lines < n_lines:
            # A partial refund a minute later: still DAY, since the last payment is at 23:53:20.
            order.refunds.append(Refund(f"5000{i:026d}", f"R{i:020d}", amount // 2 + 1, paid_at + MINUTE))
            lines += 1
        orders.append(order)
    return orders


@dataclasses.dataclass
class Row:
    lines: int
    megabytes: float
    seconds: float
    lines_per_second: float


def run(n_lines: int) -> Row:
    data = bills.render(_orders(n_lines), DAY)
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        bill = parse_trade_bill(data)
        best = min(best, time.perf_counter() - start)
    assert len(bill.lines) == n_lines and bill.summary.trade_count == n_lines
    return Row(n_lines, round(len(data) / 1e6, 2), round(best, 3), round(n_lines / best))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="10k lines")
    parser.add_argument("--json", type=pathlib.Path, default=pathlib.Path("bench/results/bill_parse.json"))
    args = parser.parse_args()
    row = run(10_000 if args.quick else args.lines)
    print(f"{'lines':>9}{'MB':>8}{'best s':>9}{'lines/s':>11}")
    print(f"{row.lines:>9}{row.megabytes:>8}{row.seconds:>9}{row.lines_per_second:>11}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(
        {"python": sys.version.split()[0], "repeats": REPEATS, **dataclasses.asdict(row)}, indent=2,
    ))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
