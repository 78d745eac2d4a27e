"""One handler under load: a fresh copy of the seeded database, the server process, a warm-up, the timed
drive, and (for payflow) the wait until every background forward has synced its payment."""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import sys
from typing import Any

from bench._notify.procs import ROOT, LoadGenerator, ServerProcess, base_env, count, free_port, wait_for_count
from bench._notify.stub import BackendStub
from payflow import devkeys

PAYFLOW = "payflow"
REFERENCES = ("group", "txn", "nodb")
NOTIFY_PATH = "/v1/wechat/notify"
SYNCED = "SELECT count(*) FROM payments WHERE state = 'synced'"
NOTIFIED = "SELECT count(*) FROM payments WHERE state = 'notified'"
LABELS = {PAYFLOW: "payflow (run.py serve)", "group": "ref: group commit", "txn": "ref: txn per request",
          "nodb": "ref: no database (ceiling)"}


@dataclasses.dataclass(frozen=True)
class Handler:
    name: str  # the row: "payflow", a reference's mode, or "payflow@VARIANT"
    kind: str  # "payflow" or a reference mode
    root: pathlib.Path = ROOT  # the checkout `run.py serve` runs from (payflow only)

    @property
    def label(self) -> str:
        return LABELS.get(self.name, f"payflow [{self.name.partition('@')[2]}]")


def payflow_env(keys: devkeys.KeySet, db_path: pathlib.Path, backend_url: str, port: int,
                log_level: str) -> dict[str, str]:
    env = base_env()
    # No WeChat call happens in this benchmark: sweeper, reconciliation and query-on-read are off.
    env.update(devkeys.env_lines(keys, payflow_url=f"http://127.0.0.1:{port}", wechat_url="http://127.0.0.1:9",
                                 backend_url=backend_url))
    env.update({
        "PAYFLOW_DATABASE_URL": f"sqlite:///{db_path}",
        "PAYFLOW_HOST": "127.0.0.1",
        "PAYFLOW_PORT": str(port),
        "PAYFLOW_SWEEP_INTERVAL": "0",
        "PAYFLOW_RECONCILE_AT": "off",
        "PAYFLOW_QUERY_ON_READ": "0",
        "PAYFLOW_LOG_FORMAT": "json",
        # A `serve` without this setting logs at INFO; the bench reports the lines logged per notification.
        "PAYFLOW_LOG_LEVEL": log_level,
    })
    return env


def server(handler: Handler, *, keys: devkeys.KeySet, db_path: pathlib.Path, log_path: pathlib.Path,
           backend_url: str, log_level: str = "WARNING") -> ServerProcess:
    # The bench picks the port: at a log level above INFO, `serve.listening` (which names it) is not logged.
    port = free_port()
    if handler.kind == PAYFLOW:
        return ServerProcess([sys.executable, str(handler.root / "run.py"), "serve"],
                             env=payflow_env(keys, db_path, backend_url, port, log_level), cwd=handler.root,
                             log_path=log_path, port=port)
    return ServerProcess(
        [sys.executable, "-m", "bench._notify.reference", handler.kind, str(db_path), str(keys.directory), str(port)],
        env=base_env(), cwd=ROOT, log_path=log_path, port=port)


@dataclasses.dataclass
class Run:
    handler: str
    round: int
    notifications: int
    acked: int
    per_second: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    seconds: float
    drain_seconds: float | None  # payflow: after the last 204, until every payment is `synced`
    forwards: int | None  # payflow: paid events the backend stub answered
    durable: bool  # every acknowledged notification's effect is in the database
    server_cpu_pct: float  # the server's CPU time during the timed drive / its wall time (100 = one core)
    server_cpu_ms: float  # the server's CPU time per acknowledged notification
    server_sys_pct: float  # the part of server_cpu_pct spent in the kernel
    loadgen_cpu_pct: float
    log_lines: int
    log_bytes: int


async def run_one(handler: Handler, *, round_no: int, workdir: pathlib.Path, seed: pathlib.Path,
                  keys: devkeys.KeySet, stub: BackendStub, loadgen: LoadGenerator, warmup: int, total: int,
                  concurrency: int, log_level: str = "WARNING") -> Run:
    """Drive notifications 0..warmup (untimed) then warmup..total (timed) against a fresh server."""
    slug = handler.name.replace("@", "-").replace("/", "-")
    db_path = workdir / f"{slug}-{round_no}.db"
    log_path = workdir / f"{slug}-{round_no}.log"
    shutil.copyfile(seed, db_path)
    is_payflow = handler.kind == PAYFLOW
    hits = stub.hits
    drain = None
    async with server(handler, keys=keys, db_path=db_path, log_path=log_path, backend_url=stub.url,
                      log_level=log_level) as proc:
        url = proc.url + NOTIFY_PATH
        if warmup:
            warm = await loadgen.call("drive", url=url, start=0, stop=warmup, concurrency=concurrency)
            if warm["acked"] != warmup:
                raise RuntimeError(f"{handler.name}: warm-up acknowledged {warm['acked']} of {warmup}: "
                                   f"{warm['errors']}; its log ends:\n{proc.log_tail()}")
            if is_payflow:  # the warm-up's forwards must not run during the timed drive
                await wait_for_count(db_path, SYNCED, warmup)
        cpu_before = proc.cpu_seconds()
        result: dict[str, Any] = await loadgen.call("drive", url=url, start=warmup, stop=total,
                                                    concurrency=concurrency)
        user, system = (after - before for after, before in zip(proc.cpu_seconds(), cpu_before, strict=True))
        if is_payflow and result["acked"]:
            drain = round(await wait_for_count(db_path, SYNCED, warmup + result["acked"]), 3)
    if is_payflow:
        durable = count(db_path, "SELECT count(*) FROM notifications") == warmup + result["acked"]
    elif handler.kind == "nodb":
        durable = True
    else:
        durable = count(db_path, NOTIFIED) == warmup + result["acked"]
    log = log_path.read_bytes()
    seconds = result["seconds"]
    run = Run(handler.name, round_no, total - warmup, result["acked"], result["per_second"], result["p50_ms"],
              result["p99_ms"], result["max_ms"], result["errors"], seconds, drain,
              stub.hits - hits if is_payflow else None, durable,
              server_cpu_pct=round(100 * (user + system) / seconds, 1),
              server_cpu_ms=round(1000 * (user + system) / max(1, result["acked"]), 3),
              server_sys_pct=round(100 * system / seconds, 1),
              loadgen_cpu_pct=round(100 * result["cpu_seconds"] / seconds, 1),
              log_lines=log.count(b"\n"), log_bytes=len(log))
    discard(db_path)
    return run


def discard(db_path: pathlib.Path) -> None:
    """Remove a database and its WAL files (the next run starts from a fresh copy of the seed)."""
    for suffix in ("", "-wal", "-shm"):
        pathlib.Path(f"{db_path}{suffix}").unlink(missing_ok=True)
