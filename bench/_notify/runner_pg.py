"""One handler of notify_throughput_pg.py under load: a fresh schema migrated by the handler's checkout and COPYed
full of `prepaid` payments, its server(s) (and the proxy, for replicas), a warm-up, the timed drive with CPU
sampled from /proc, and for payflow the wait until every payment is `synced`; again if the server restarted."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import pathlib
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from aiohttp import web

from bench._notify import fixture, procs
from bench._notify.procs import LoadGenerator, ServerProcess
from bench._notify.stub import BackendStub
from payflow import devkeys
from simulator.chaos.proxy import create_app as proxy_app

ROOT = procs.ROOT
NOTIFY_PATH = "/v1/wechat/notify"
PAYFLOW, PAYFLOW_3, TXN, CTE = "payflow", "payflow-3", "txn", "cte"
REFERENCES = (TXN, CTE)
LABELS = {PAYFLOW: "payflow, 1 replica", PAYFLOW_3: "payflow, 3 replicas + proxy",
          TXN: "ref (a): txn per request", CTE: "ref (b): one statement"}
# The references' connections per pool: what served them best here (BENCHMARKS.md, notify_throughput_pg).
REF_POOL = 10
WAIT_LIMIT = 120.0
COLUMNS = ("out_trade_no", "order_id", "amount", "currency", "description", "openid", "state", "version",
           "event_id", "prepay_id", "expires_at", "next_attempt_at", "attempts", "created_at", "updated_at")
# A checkout's migrations, run in its own interpreter (a variant's schema is its own).
_MIGRATE = ("import asyncio, sys\nfrom payflow.store import open_store\n"
            "async def main():\n    store = await open_store(sys.argv[1])\n    await store.close()\n"
            "asyncio.run(main())\n")


@dataclasses.dataclass(frozen=True)
class Handler:
    name: str  # payflow, payflow-3, txn, cte, payflow@VARIANT or payflow@pool=N
    replicas: int = 1  # payflow kinds only
    root: pathlib.Path = ROOT  # the checkout that runs it
    pool: int | None = None  # connections per pool (payflow: None is its own default)

    @property
    def is_payflow(self) -> bool:
        return self.name not in REFERENCES

    @property
    def label(self) -> str:
        return LABELS.get(self.name, f"payflow [{self.name.partition('@')[2]}]")


@dataclasses.dataclass
class Run:
    handler: str
    round: int
    notifications: int
    acked: int
    per_second: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]
    seconds: float
    drain_seconds: float | None  # payflow: after the last 204, until every payment is `synced`
    synced_per_second: float | None  # payflow: acknowledged / (drive + drain), notification to backend
    durable: bool  # every acknowledged notification's row (and, for payflow, its payment's sync) is stored
    server_cpu_ms: float  # the handler's processes: CPU time per acknowledged notification
    # the handler's and PostgreSQL's CPU per notification until the last payment is synced (payflow forwards
    # after acknowledging, a few during the drive and the rest in the drain): the whole cost of one
    total_cpu_ms: float
    postgres_cpu_ms: float  # every postgres process, per acknowledged notification
    server_cpu_pct: float  # 100 = one core, during the timed drive
    postgres_cpu_pct: float
    loadgen_cpu_pct: float
    bench_cpu_pct: float  # this process: the proxy (3 replicas) and the backend stub
    machine_busy_pct: float  # all CPUs (200 = both cores), from /proc/stat
    other_cpu_pct: float  # machine busy minus the handler, PostgreSQL, the load generator and this process
    redone: int = 0  # times this run was started again because the server restarted during it


# --- CPU accounting ---------------------------------------------------------------------------------


def _ticks(pid: int) -> int:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def _postgres_ticks() -> int:
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if pathlib.Path(f"/proc/{entry.name}/comm").read_text().strip() == "postgres":
                total += _ticks(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return total


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs."""
    values = [int(v) for v in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values[:8]) - idle, sum(values[:8])


@dataclasses.dataclass
class _Sample:
    at: float
    server: int
    postgres: int
    own: int
    machine: tuple[int, int]

    @classmethod
    def take(cls, pids: list[int]) -> _Sample:
        return cls(time.perf_counter(), sum(_ticks(p) for p in pids), _postgres_ticks(), _ticks(os.getpid()),
                   _machine_ticks())


# --- the database -----------------------------------------------------------------------------------


def _with_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}search_path={schema}"


async def _prepare(url: str, schema: str, root: pathlib.Path, count: int) -> None:
    """Migrate the fresh schema with `root`'s payflow, then COPY `count` prepaid payments into it."""
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", _MIGRATE, _with_schema(url, schema),
                                                   cwd=root, env=procs.base_env(), stdout=asyncio.subprocess.DEVNULL,
                                                   stderr=asyncio.subprocess.PIPE)
    _, stderr = await process.communicate()
    if process.returncode:
        raise RuntimeError(f"migrating {schema} with {root} failed: {stderr.decode(errors='replace')[-2000:]}")
    now = dt.datetime.now(dt.UTC)
    connection = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        await connection.copy_records_to_table("payments", columns=COLUMNS, records=[
            (fixture.out_trade_no(i), f"order-{i}", fixture.AMOUNT, "CNY", "bench", "oBench", "prepaid", 2,
             f"evt_{i}", f"wx_prepay_{i}", now + dt.timedelta(hours=2), now + dt.timedelta(days=365), 0, now, now)
            for i in range(count)])
        await connection.execute("ANALYZE payments")
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def _schema(url: str) -> AsyncIterator[str]:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        await admin.close()
        yield schema
    finally:
        # A connection of its own: the server may have been restarted meanwhile (other work on this machine).
        admin = await asyncpg.connect(url)
        try:
            await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await admin.close()


async def _count(db: asyncpg.Connection, sql: str) -> int:
    return int(await db.fetchval(sql))


async def _wait_synced(db: asyncpg.Connection, expected: int) -> float:
    began = time.perf_counter()
    while True:
        found = await _count(db, "SELECT count(*) FROM payments WHERE state = 'synced'")
        if found >= expected:
            return time.perf_counter() - began
        if time.perf_counter() - began > WAIT_LIMIT:
            raise RuntimeError(f"{found} of {expected} payments synced after {WAIT_LIMIT} s")
        await asyncio.sleep(0.05)


# --- the servers ------------------------------------------------------------------------------------


def _servers(handler: Handler, *, database: str, keys: devkeys.KeySet, backend_url: str, workdir: pathlib.Path,
             round_no: int) -> list[ServerProcess]:
    slug = handler.name.replace("@", "-")
    if not handler.is_payflow:
        port = procs.free_port()
        return [ServerProcess([sys.executable, "-m", "bench._notify.reference_pg", handler.name, database,
                               str(keys.directory), str(port), str(handler.pool or REF_POOL)],
                              env=procs.base_env(), cwd=ROOT, log_path=workdir / f"{slug}-{round_no}.log", port=port)]
    url = database if handler.pool is None else f"{database}&pool_size={handler.pool}"
    servers = []
    for i in range(handler.replicas):
        port = procs.free_port()
        env = procs.base_env()
        # No WeChat call happens here: sweeper, reconciliation and query-on-read are off.
        env.update(devkeys.env_lines(keys, payflow_url=f"http://127.0.0.1:{port}", wechat_url="http://127.0.0.1:9",
                                     backend_url=backend_url))
        env.update(PAYFLOW_DATABASE_URL=url, PAYFLOW_HOST="127.0.0.1", PAYFLOW_PORT=str(port),
                   PAYFLOW_SWEEP_INTERVAL="0", PAYFLOW_RECONCILE_AT="off", PAYFLOW_QUERY_ON_READ="0",
                   PAYFLOW_LOG_FORMAT="json", PAYFLOW_LOG_LEVEL="WARNING")
        servers.append(ServerProcess([sys.executable, str(handler.root / "run.py"), "serve"], env=env,
                                     cwd=handler.root, log_path=workdir / f"{slug}-{round_no}-{i}.log", port=port))
    return servers


@contextlib.asynccontextmanager
async def _proxy(upstreams: list[str]) -> AsyncIterator[str]:
    runner = web.AppRunner(proxy_app(upstreams), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def run_one(handler: Handler, *, url: str, round_no: int, keys: devkeys.KeySet, stub: BackendStub,
                  loadgen: LoadGenerator, workdir: pathlib.Path, warmup: int, total: int, concurrency: int) -> Run:
    async with _schema(url) as schema:
        await _prepare(url, schema, handler.root, total)
        database = _with_schema(url, schema)
        watcher = await asyncpg.connect(database)
        try:
            async with contextlib.AsyncExitStack() as stack:
                servers = [await stack.enter_async_context(s) for s in
                           _servers(handler, database=database, keys=keys, backend_url=stub.url, workdir=workdir,
                                    round_no=round_no)]
                base = servers[0].url
                if len(servers) > 1:
                    base = await stack.enter_async_context(_proxy([s.url for s in servers]))
                target = base + NOTIFY_PATH
                warm = await loadgen.call("drive", url=target, start=0, stop=warmup, concurrency=concurrency)
                if warm["acked"] != warmup:
                    raise RuntimeError(f"{handler.name}: warm-up acknowledged {warm['acked']} of {warmup}: "
                                       f"{warm['errors']}; its log ends:\n{servers[0].log_tail()}")
                if handler.is_payflow:  # the warm-up's forwards must not run during the timed drive
                    await _wait_synced(watcher, warmup)
                pids = [s.pid for s in servers]
                before = _Sample.take(pids)
                result: dict[str, Any] = await loadgen.call("drive", url=target, start=warmup, stop=total,
                                                            concurrency=concurrency)
                after = drained = _Sample.take(pids)
                drain = None
                if handler.is_payflow and result["acked"]:
                    drain = round(await _wait_synced(watcher, warmup + result["acked"]), 3)
                    drained = _Sample.take(pids)
            noted = await _count(watcher, "SELECT count(*) FROM notifications")
            paid = await _count(watcher, "SELECT count(*) FROM payments WHERE state <> 'prepaid'")
        finally:
            await watcher.close()
    acked = result["acked"]
    tick = os.sysconf("SC_CLK_TCK")
    wall = after.at - before.at

    def pct(ticks: int) -> float:
        return round(100 * ticks / tick / wall, 1)

    server, pg, own = after.server - before.server, after.postgres - before.postgres, after.own - before.own
    busy = (after.machine[0] - before.machine[0]) / max(1, after.machine[1] - before.machine[1])
    busy_pct = round(100 * procs.cpu_count() * busy, 1)
    loadgen_pct = round(100 * result["cpu_seconds"] / wall, 1)
    return Run(handler.name, round_no, total - warmup, acked, result["per_second"], result["p50_ms"],
               result["p99_ms"], result["errors"], result["seconds"], drain,
               round(acked / (result["seconds"] + drain), 1) if drain is not None and acked else None,
               durable=noted == warmup + acked and paid == warmup + acked,
               server_cpu_ms=round(1000 * server / tick / max(1, acked), 3),
               total_cpu_ms=round(1000 * (drained.server - before.server + drained.postgres - before.postgres)
                                  / tick / max(1, acked), 3),
               postgres_cpu_ms=round(1000 * pg / tick / max(1, acked), 3),
               server_cpu_pct=pct(server), postgres_cpu_pct=pct(pg), loadgen_cpu_pct=loadgen_pct,
               bench_cpu_pct=pct(own), machine_busy_pct=busy_pct,
               other_cpu_pct=round(busy_pct - pct(server) - pct(pg) - pct(own) - loadgen_pct, 1))


async def _postmaster_started(url: str) -> dt.datetime:
    """When the server last started; waits (up to a minute) while it does not answer."""
    deadline = time.monotonic() + 60
    while True:
        try:
            connection = await asyncpg.connect(url)
            try:
                return await connection.fetchval("SELECT pg_postmaster_start_time()")  # type: ignore[no-any-return]
            finally:
                await connection.close()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)


async def measured(handler: Handler, *, url: str, round_no: int, **kwargs: Any) -> Run:
    """`run_one`, run again (twice at most) when the server restarted meanwhile (other work on this machine may
    restart it: simulate-chaos --db-restart); `redone` says how often."""
    for attempt in range(3):
        started = await _postmaster_started(url)
        try:
            one = await run_one(handler, url=url, round_no=round_no, **kwargs)
        except (OSError, RuntimeError, asyncpg.PostgresError, asyncpg.InterfaceError):
            if attempt == 2 or await _postmaster_started(url) == started:
                raise
        else:
            if attempt == 2 or await _postmaster_started(url) == started:
                return dataclasses.replace(one, redone=attempt)
        print(f"round {round_no} {handler.name}: PostgreSQL restarted during the run; running it again",
              file=sys.stderr)
    raise AssertionError("unreachable")
