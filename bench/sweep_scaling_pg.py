"""The sweep-scaling benchmark on PostgreSQL: one pass over 1,000 due payments in tables of 10
thousand and of 1 million, with one sweeper and with three sweepers (replicas) claiming at once.

    python bench/sweep_scaling_pg.py [--database URL] [--quick] [--json FILE]

Same shape as sweep_scaling.py (mostly terminal payments outside the partial index, 1,000 `prepaid`
due; the WeChat stub answers NOTPAY so each claimed payment is rescheduled). Rows are seeded with
COPY into a fresh schema that is dropped afterwards. "3 replicas" is three stores (three pools) with
their own Sweeper running one pass each at the same moment: SKIP LOCKED splits the due set.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import pathlib
import sys
import time
import uuid

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import asyncpg  # noqa: E402

from bench.sweep_scaling import DUE, REPEATS, TERMINAL, StubWechat  # noqa: E402
from payflow import logs  # noqa: E402
from payflow.service import PaymentService  # noqa: E402
from payflow.settings import Settings  # noqa: E402
from payflow.store import open_store  # noqa: E402
from payflow.sweeper import Sweeper  # noqa: E402

T0 = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
LATER = T0 + dt.timedelta(days=3650)  # not expired: every pass queries and reschedules, as in sweep_scaling.py
COLUMNS = ("out_trade_no", "order_id", "amount", "currency", "description", "openid", "state", "version",
           "event_id", "expires_at", "next_attempt_at", "attempts", "created_at", "updated_at")


@dataclasses.dataclass
class Row:
    payments: int
    replicas: int
    seed_seconds: float
    pass_seconds: float
    passes: list[float]


async def _seed(url: str, schema: str, n: int) -> float:
    started = time.perf_counter()
    connection = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        step = n // DUE
        rows = [(f"P{i:012d}", f"o{i}", 100, "CNY", "bench", "o", "prepaid" if i % step == 0 else
                 TERMINAL[i % len(TERMINAL)], 2, f"e{i}", LATER, T0 if i % step == 0 else None, 0, T0, T0)
                for i in range(n)]
        await connection.copy_records_to_table("payments", records=rows, columns=COLUMNS)
        await connection.execute("ANALYZE payments")
    finally:
        await connection.close()
    return time.perf_counter() - started


async def _reset(url: str, schema: str) -> None:
    connection = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        await connection.execute("UPDATE payments SET next_attempt_at = $1, lease_token = NULL "
                                 "WHERE state = 'prepaid'", T0)
    finally:
        await connection.close()


async def measure(url: str, n: int, replicas: int) -> Row:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(url)
    await admin.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in url else "?"
    stores = [await open_store(f"{url}{separator}search_path={schema}") for _ in range(replicas)]
    try:
        seeded = await _seed(url, schema, n)
        settings = dataclasses.replace(Settings(), jitter=0.0)
        services = [PaymentService(store, settings, wechat=StubWechat()) for store in stores]
        passes = []
        for _ in range(REPEATS):
            await _reset(url, schema)
            started = time.perf_counter()
            reports = await asyncio.gather(*(Sweeper(s, batch=DUE, concurrency=8).run_once() for s in services))
            passes.append(round(time.perf_counter() - started, 4))
            assert sum(r.claimed for r in reports) == DUE, [r.claimed for r in reports]
        return Row(n, replicas, round(seeded, 2), min(passes), passes)
    finally:
        for store in stores:
            await store.close()
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--quick", action="store_true", help="10k vs 100k")
    parser.add_argument("--json", type=pathlib.Path, default=pathlib.Path("bench/results/sweep_scaling_pg.json"))
    args = parser.parse_args()
    logs.configure_logging("json", level="WARNING")
    large = 100_000 if args.quick else 1_000_000

    async def run() -> list[Row]:
        return [await measure(args.database, n, r) for n in (10_000, large) for r in (1, 3)]

    rows = asyncio.run(run())
    print(f"{'payments':>10}{'replicas':>10}{'seed s':>9}{'pass s':>9}  passes")
    for row in rows:
        print(f"{row.payments:>10}{row.replicas:>10}{row.seed_seconds:>9}{row.pass_seconds:>9}  {row.passes}")
    for replicas in (1, 3):
        small, big = (r for r in rows if r.replicas == replicas)
        print(f"ratio {big.payments:,} / {small.payments:,} with {replicas} replica(s): "
              f"{big.pass_seconds / small.pass_seconds:.3f} (target <= 1.5)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
