"""Acknowledged notifications per second with payflow on PostgreSQL: 1 replica, and 3 replicas
behind the round-robin proxy of simulator/chaos/proxy.py.

    python bench/notify_throughput_pg.py [--notifications N] [--concurrency 64] [--database URL] [--quick]

Same notifications as notify_throughput.py (bench/_notify: validly signed and encrypted, one per
prepaid payment, built before timing) and the same always-200 backend stub. The payments are COPYed
into a fresh schema per configuration, dropped afterwards. Unlike notify_throughput.py the load is
driven from this process (its own event loop, in-process proxy for 3 replicas): on 2 cores, shared
with PostgreSQL, the figures compare the configurations with each other, not with the SQLite ones.
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
import uuid

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402
from aiohttp import web  # noqa: E402

from bench._notify import fixture, procs  # noqa: E402
from bench._notify.stub import BackendStub  # noqa: E402
from payflow import devkeys  # noqa: E402
from payflow.store import open_store  # noqa: E402
from simulator.chaos.proxy import create_app as proxy_app  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Row:
    replicas: int
    notifications: int
    acked: int
    per_second: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]


async def _prefill(url: str, schema: str, count: int) -> None:
    store = await open_store(f"{url}{'&' if '?' in url else '?'}search_path={schema}")  # migrates the schema
    await store.close()
    now = dt.datetime.now(dt.UTC)
    connection = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        await connection.copy_records_to_table("payments", columns=(
            "out_trade_no", "order_id", "amount", "currency", "description", "openid", "state", "version",
            "event_id", "prepay_id", "expires_at", "next_attempt_at", "attempts", "created_at", "updated_at"),
            records=[(fixture.out_trade_no(i), f"order-{i}", fixture.AMOUNT, "CNY", "bench", "oBench", "prepaid", 2,
                      f"evt_{i}", f"wx_prepay_{i}", now + dt.timedelta(hours=2), now + dt.timedelta(days=365), 0,
                      now, now) for i in range(count)])
    finally:
        await connection.close()


async def _drive(url: str, built: list[tuple[bytes, dict[str, str]]], concurrency: int) -> Row:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    queue = iter(built)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def worker() -> None:
            for body, headers in queue:
                started = time.perf_counter()
                try:
                    async with session.post(f"{url}/v1/wechat/notify", data=body, headers=headers) as response:
                        await response.read()
                        status = str(response.status)
                except aiohttp.ClientError as exc:
                    status = type(exc).__name__
                if status == "204":
                    latencies.append(time.perf_counter() - started)
                else:
                    errors[status] = errors.get(status, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    ordered = sorted(latencies) or [0.0]
    return Row(0, len(built), len(latencies), round(len(latencies) / seconds, 1),
               round(statistics.median(ordered) * 1000, 2), round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 2),
               errors)


async def measure(url: str, replicas: int, count: int, concurrency: int, workdir: pathlib.Path,
                  keys: devkeys.KeySet) -> Row:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(url)
    await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        await _prefill(url, schema, count)
        built = fixture.build(keys, 0, count)
        database = f"{url}{'&' if '?' in url else '?'}search_path={schema}"
        async with BackendStub() as backend:
            ports = [procs.free_port() for _ in range(replicas)]
            servers = []
            try:
                for i, port in enumerate(ports):
                    env = procs.base_env()
                    env.update(devkeys.env_lines(keys, payflow_url=f"http://127.0.0.1:{port}",
                                                 wechat_url="http://127.0.0.1:9", backend_url=backend.url))
                    env.update(PAYFLOW_DATABASE_URL=database, PAYFLOW_PORT=str(port), PAYFLOW_SWEEP_INTERVAL="0",
                               PAYFLOW_RECONCILE_AT="off", PAYFLOW_QUERY_ON_READ="0", PAYFLOW_LOG_FORMAT="json",
                               PAYFLOW_LOG_LEVEL="WARNING", PAYFLOW_API_TOKEN="a", PAYFLOW_ADMIN_TOKEN="b")
                    server = procs.ServerProcess([sys.executable, str(ROOT / "run.py"), "serve"], env=env, cwd=ROOT,
                                                 log_path=workdir / f"payflow-{replicas}-{i}.log", port=port)
                    servers.append(await server.__aenter__())
                if replicas == 1:
                    row = await _drive(servers[0].url, built, concurrency)
                else:
                    runner = web.AppRunner(proxy_app([s.url for s in servers]), access_log=None,
                                           handle_signals=False)
                    await runner.setup()
                    try:
                        site = web.TCPSite(runner, "127.0.0.1", 0)
                        await site.start()
                        host, port = runner.addresses[0][:2]
                        row = await _drive(f"http://{host}:{port}", built, concurrency)
                    finally:
                        await runner.cleanup()
            finally:
                for server in servers:
                    await server.stop()
        return dataclasses.replace(row, replicas=replicas)
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notifications", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--quick", action="store_true", help="1,500 notifications")
    parser.add_argument("--json", type=pathlib.Path, default=pathlib.Path("bench/results/notify_throughput_pg.json"))
    args = parser.parse_args()
    count = 1_500 if args.quick else args.notifications

    async def run() -> list[Row]:
        with tempfile.TemporaryDirectory(prefix="payflow-notify-pg-") as tmp:
            keys = devkeys.write_keyset(pathlib.Path(tmp) / "keys")
            return [await measure(args.database, r, count, args.concurrency, pathlib.Path(tmp), keys)
                    for r in (1, 3)]

    rows = asyncio.run(run())
    print(f"{'replicas':>9}{'acked':>8}{'acked/s':>10}{'p50 ms':>9}{'p99 ms':>9}  errors")
    for row in rows:
        print(f"{row.replicas:>9}{row.acked:>8}{row.per_second:>10}{row.p50_ms:>9}{row.p99_ms:>9}  {row.errors}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
