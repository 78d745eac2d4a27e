"""Acknowledged WeChat notifications per second on PostgreSQL: payflow (1 replica, and 3 behind the
round-robin proxy of simulator/chaos/proxy.py) next to two asyncpg reference handlers, paired per round.

    python bench/notify_throughput_pg.py [--notifications N] [--rounds R] [--concurrency 64] [--database URL]
                                         [--pool P] [--ref-pool P] [--also-pool P ...] [--variant NAME=CHECKOUT ...]
                                         [--only HANDLER ...] [--quick] [--json FILE]

Handlers, each in its own process(es), each run on a fresh schema (payflow's, migrated by the checkout that
runs it) into which warm-up + N `prepaid` payments are COPYed, dropped afterwards:

  payflow    `run.py serve` on PostgreSQL; the paid event of every `pay` is forwarded in the background to
             an always-200 backend stub, so every `pay` is followed by a `sync`, as in production
  payflow-3  three `run.py serve` replicas on the same schema, behind the proxy (run in this process)
  txn        reference (a): verify + decrypt + one pooled transaction per request: read the payment,
             compare-and-set it, insert the event row and the notification row (BEGIN … COMMIT: 6 round trips)
  cte        reference (b): the same logical work as one statement (data-modifying CTEs; 1 round trip)

(bench/_notify/reference_pg.py has the references, bench/_notify/runner_pg.py runs one handler. The references'
pool has REF_POOL connections, or `--ref-pool`; `--pool` sets payflow's, `--also-pool N` adds a 1-replica
payflow row with a pool of N to each round.) The
notifications are those of notify_throughput.py: distinct, validly signed and encrypted, built before timing
by the load generator, a separate process, which drives them at a fixed concurrency over keep-alive
connections, first a warm-up (untimed; payflow's warm-up forwards are let drain), then the timed drive.

Each round runs every handler once, every other round in reverse order. The ratios are taken per round
(payflow's rate over the reference's in that same round) and the target (payflow, 1 replica, at least 0.8 ×
reference (a)) is checked against the median of those: on a shared 2-core VM whose speed drifts within
minutes, a ratio within one round cancels most of the drift. The table also shows CPU during the timed drive:
the handler's own processes, PostgreSQL's (every `postgres` process, so also other clients of the server if
any), and what the rest of the machine used.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import pathlib
import platform
import signal
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


from bench._notify import procs, runner_pg  # noqa: E402
from bench._notify.procs import LoadGenerator  # noqa: E402
from bench._notify.runner_pg import (  # noqa: E402
    LABELS,
    PAYFLOW,
    PAYFLOW_3,
    REF_POOL,
    REFERENCES,
    Handler,
    Run,
)
from bench._notify.stub import BackendStub  # noqa: E402
from payflow import devkeys, logs  # noqa: E402
from payflow.store import postgres  # noqa: E402

TARGET = 0.8  # payflow (1 replica) over reference (a)

async def run(handlers: list[Handler], *, url: str, n: int, warmup: int, concurrency: int,
              rounds: int) -> list[Run]:
    with tempfile.TemporaryDirectory(prefix="notify-pg-bench-") as tmp:
        workdir = pathlib.Path(tmp)
        keys = devkeys.write_keyset(workdir / "keys")
        runs = []
        async with BackendStub() as stub, LoadGenerator(keys.directory) as loadgen:
            built = await loadgen.call("build", start=0, count=warmup + n)
            print(f"built {built['built']} notifications in {built['seconds']} s (load generator)", file=sys.stderr)
            for round_no in range(1, rounds + 1):
                for handler in handlers if round_no % 2 else handlers[::-1]:
                    one = await runner_pg.measured(handler, url=url, round_no=round_no, keys=keys, stub=stub,
                                                   loadgen=loadgen, workdir=workdir, warmup=warmup, total=warmup + n,
                                                   concurrency=concurrency)
                    print(f"round {round_no} {handler.name:<16} {one.per_second:>9} /s  p50 {one.p50_ms} ms  "
                          f"p99 {one.p99_ms} ms  errors {sum(one.errors.values())}  cpu {one.server_cpu_ms} + pg "
                          f"{one.postgres_cpu_ms} ms/notification  other {one.other_cpu_pct}%", file=sys.stderr)
                    runs.append(one)
        return runs


# --- report -----------------------------------------------------------------------------------------


def median_run(runs: list[Run], name: str) -> Run:
    mine = sorted((r for r in runs if r.handler == name), key=lambda r: r.per_second)
    return mine[(len(mine) - 1) // 2]


def paired_ratios(runs: list[Run], name: str) -> dict[str, list[float]]:
    """Per round, `name`'s rate over each reference's rate in that same round."""
    by_round: dict[int, dict[str, float]] = {}
    for r in runs:
        by_round.setdefault(r.round, {})[r.handler] = r.per_second
    return {f"vs_{ref}": [round(rates[name] / rates[ref], 3) for _, rates in sorted(by_round.items())
                          if rates.get(ref)]
            for ref in REFERENCES}


def _variant(text: str) -> Handler:
    name, sep, path = text.partition("=")
    root = pathlib.Path(path).resolve()
    if not sep or not name or not (root / "run.py").is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=CHECKOUT (a directory holding run.py)")
    return Handler(f"payflow@{name}", 1, root)


def _loadavg() -> str:
    return " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notifications", type=int, default=10_000, help="timed notifications per handler")
    parser.add_argument("--warmup", type=int, default=None, help="untimed notifications first (default N/10)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=None, help="runs of every handler (default 5; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="1,500 notifications, one round (about 30 s)")
    parser.add_argument("--pool", type=int, default=None,
                        help=f"payflow's connections per replica (?pool_size=; default its own, {postgres.POOL_SIZE})")
    parser.add_argument("--ref-pool", type=int, default=REF_POOL, help="the references' connections")
    parser.add_argument("--also-pool", type=int, action="append", default=[], metavar="P",
                        help="also run one payflow replica with a pool of P in every round (repeatable)")
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--only", action="append", choices=(PAYFLOW, PAYFLOW_3, *REFERENCES), default=[],
                        help="run only these handlers (repeatable; default all)")
    parser.add_argument("--variant", type=_variant, action="append", default=[], metavar="NAME=CHECKOUT",
                        help="also run one `run.py serve` replica from CHECKOUT (e.g. a scratch copy of a commit)")
    parser.add_argument("--json", type=pathlib.Path, default=pathlib.Path("bench/results/notify_throughput_pg.json"))
    args = parser.parse_args()
    logs.configure_logging("json", level="WARNING")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # unwinds: children stopped, schemas dropped
    n = 1_500 if args.quick else args.notifications
    warmup = args.warmup if args.warmup is not None else max(300, n // 10)
    rounds = args.rounds or (1 if args.quick else 5)
    names = args.only or [PAYFLOW, PAYFLOW_3, *REFERENCES]
    handlers = [Handler(name, 3 if name == PAYFLOW_3 else 1, pool=args.ref_pool if name in REFERENCES else args.pool)
                for name in names]
    handlers[1:1] = [*args.variant, *(Handler(f"payflow@pool={size}", 1, pool=size) for size in args.also_pool)]
    started, load_before = time.perf_counter(), _loadavg()
    runs = asyncio.run(run(handlers, url=args.database, n=n, warmup=warmup, concurrency=args.concurrency,
                           rounds=rounds))
    wall, load_after = time.perf_counter() - started, _loadavg()
    chosen = {h.name: median_run(runs, h.name) for h in handlers}

    print(f"{n} notifications per handler after {warmup} warm-up, concurrency {args.concurrency}, {rounds} round(s), "
          f"pool {args.pool or postgres.POOL_SIZE} (references {args.ref_pool}); median round shown")
    width = max(30, *(len(h.label) + 2 for h in handlers))
    print(f"{'handler':<{width}}{'acked/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>7}{'durable':>8}{'drain s':>8}"
          f"{'synced/s':>9}"
          f"{'CPU ms/n':>9}{'PG ms/n':>9}{'srv %':>7}{'PG %':>7}{'gen %':>7}{'bench %':>8}{'other %':>8}")
    for h in handlers:
        r = chosen[h.name]
        drain = "" if r.drain_seconds is None else r.drain_seconds
        synced = "" if r.synced_per_second is None else r.synced_per_second
        print(f"{h.label:<{width}}{r.per_second:>9}{r.p50_ms:>9}{r.p99_ms:>9}{sum(r.errors.values()):>7}"
              f"{'yes' if r.durable else 'NO':>8}{drain:>8}{synced:>9}{r.server_cpu_ms:>9}{r.postgres_cpu_ms:>9}"
              f"{r.server_cpu_pct:>7}{r.postgres_cpu_pct:>7}{r.loadgen_cpu_pct:>7}{r.bench_cpu_pct:>8}"
              f"{r.other_cpu_pct:>8}")
    print("CPU ms/n: the handler's processes per acknowledged notification; PG ms/n: every postgres process's; "
          "%: of one core during the drive (bench: this process, i.e. the proxy and the backend stub; other: the rest "
          "of the machine). drain s: after the last 204 until every payment is `synced`; synced/s: notifications / "
          "(drive + drain)")
    print("per round (acked/s): " + "; ".join(
        f"{h.name} " + ", ".join(f"{r.per_second:.0f}" for r in runs if r.handler == h.name) for h in handlers))
    cpu = {h.name: statistics.median(r.total_cpu_ms for r in runs if r.handler == h.name) for h in handlers}
    print("CPU per notification, the handler's processes and PostgreSQL's, through the drain (every payment "
          "synced), median of rounds (ms): " + ", ".join(f"{name} {value:.3f}" for name, value in cpu.items()))
    payflows = [h.name for h in handlers if h.is_payflow]
    per_round = {name: paired_ratios(runs, name) for name in payflows}
    medians = {name: {key: round(statistics.median(values), 3) for key, values in ratios.items() if values}
               for name, ratios in per_round.items()}
    met = None
    for name in payflows:
        if not medians[name]:
            continue
        parts = [f"{medians[name][f'vs_{ref}']:.2f} x {LABELS[ref]} (rounds "
                 f"{', '.join(f'{x:.2f}' for x in per_round[name][f'vs_{ref}'])})"
                 for ref in REFERENCES if f"vs_{ref}" in medians[name]]
        print(f"{Handler(name).label if '@' not in name else name}: " + "; ".join(parts))
        if name == PAYFLOW and "vs_txn" in medians[name]:
            met = medians[name]["vs_txn"] >= TARGET
            print(f"target: payflow (1 replica) >= {TARGET} x reference (a) at the median of the per-round ratios: "
                  f"{'met' if met else 'NOT met'}")
    if any(r.redone for r in runs):
        print("run again after a server restart: " + ", ".join(f"{r.handler}#{r.round}" for r in runs if r.redone))
    errors = {f"{r.handler}#{r.round}": r.errors for r in runs if r.errors}
    if errors:
        print(f"non-204 answers: {errors}")
    if not all(r.durable for r in runs):
        print("NOT DURABLE: " + ", ".join(f"{r.handler}#{r.round}" for r in runs if not r.durable))
    print(f"wall time {wall:.1f} s; load average {load_before} before, {load_after} after, on {procs.cpu_count()} CPUs")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": procs.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "params": {"notifications": n, "warmup": warmup, "concurrency": args.concurrency, "rounds": rounds,
                   "pool": args.pool or postgres.POOL_SIZE, "ref_pool": args.ref_pool, "also_pool": args.also_pool,
                   "variants": {h.name: str(h.root) for h in args.variant}},
        "summary": {name: dataclasses.asdict(r) for name, r in chosen.items()},
        "ratios": medians, "ratios_per_round": per_round, "target_vs_txn": TARGET, "met": met,
        "cpu_ms_per_notification": cpu,
        "per_round": {h.name: [r.per_second for r in runs if r.handler == h.name] for h in handlers},
        "runs": [dataclasses.asdict(r) for r in runs],
        "wall_seconds": round(wall, 1), "loadavg_before": load_before, "loadavg_after": load_after,
    }, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
