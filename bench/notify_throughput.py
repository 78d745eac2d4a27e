"""Acknowledged WeChat notifications per second: payflow's `run.py serve` next to reference handlers.

    python bench/notify_throughput.py [--notifications N] [--concurrency 64] [--rounds R] [--quick] [--json FILE]
                                      [--log-level WARNING] [--variant NAME=CHECKOUT ...]

Every handler runs as its own process on its own copy of one temporary SQLite database (WAL,
synchronous=FULL) pre-filled with `prepaid` payments, and gets the same distinct, validly signed and
AES-GCM encrypted notifications (one per payment), pre-built in a separate load-generator process and
driven at a fixed concurrency over keep-alive connections. Handlers:

  payflow   `run.py serve`: verify, decrypt, dedupe, CAS transition + event + notification row, then the
            paid event forwarded in the background to an always-200 backend stub (so every `pay` is
            followed by a `sync`, as in production; a failing backend would add reschedule writes instead)
  group     reference: verify + decrypt + UPDATE payment + INSERT event, group-committed (one thread hop and
            one commit per batch, a savepoint per request; the bench's own writer, not payflow's)
  txn       reference: the same with one aiosqlite transaction per request
  nodb      reference: verify + decrypt only (the crypto + HTTP ceiling, for context)

payflow runs with PAYFLOW_LOG_FORMAT=json and PAYFLOW_LOG_LEVEL=WARNING unless `--log-level` says otherwise
(its stderr goes to a file; the lines it logged per notification are reported).
`--variant NAME=DIR` adds `run.py serve` from another checkout (a scratch copy with a proposed change) as
one more row in the same interleaved rounds; the references always come from this checkout.

Each round runs every handler once (warm-up first, untimed), every other round in reverse order; the
table shows, per handler, the round with the median throughput. payflow is compared with the targets of
issue 8 (at least 0.8 × the group-commit reference and at least 2 × the one-transaction-per-request
reference) by pairing: in each round, payflow's rate over the reference's rate in that round, and the
median of those ratios. On a shared VM whose speed drifts by tens of percent within minutes, a ratio
taken within one round cancels most of the drift; the ratio of the two median rounds, which may come
from different rounds, is printed too. Besides
throughput, the table shows the server's CPU use during the timed drive (100% = one core) and its CPU
time per acknowledged notification, which is far less sensitive to other load on the machine.
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
import sqlite3
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench._notify import fixture, procs, runner  # noqa: E402
from bench._notify.procs import LoadGenerator  # noqa: E402
from bench._notify.stub import BackendStub  # noqa: E402
from payflow import devkeys, logs  # noqa: E402

TARGET_GROUP = 0.8
TARGET_TXN = 2.0


async def run(handlers: list[runner.Handler], n: int, warmup: int, concurrency: int, rounds: int,
              log_level: str) -> list[runner.Run]:
    with tempfile.TemporaryDirectory(prefix="notify-bench-") as tmp:
        workdir = pathlib.Path(tmp)
        keys = devkeys.write_keyset(workdir / "keys")
        seed = workdir / "seed.db"
        started = time.perf_counter()
        await fixture.prefill(seed, warmup + n)
        print(f"seeded {warmup + n} prepaid payments in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        runs = []
        async with BackendStub() as stub, LoadGenerator(keys.directory) as loadgen:
            built = await loadgen.call("build", start=0, count=warmup + n)
            print(f"built {built['built']} notifications in {built['seconds']} s (load generator)", file=sys.stderr)
            for round_no in range(1, rounds + 1):
                # Every other round in reverse order, so no handler always runs right after the same one
                # or at the same point of a round.
                for handler in handlers if round_no % 2 else handlers[::-1]:
                    one = await runner.run_one(handler, round_no=round_no, workdir=workdir, seed=seed, keys=keys,
                                               stub=stub, loadgen=loadgen, warmup=warmup, total=warmup + n,
                                               concurrency=concurrency, log_level=log_level)
                    print(f"round {round_no} {handler.name:<16} {one.per_second:>9} /s  p50 {one.p50_ms} ms  "
                          f"p99 {one.p99_ms} ms  errors {sum(one.errors.values())}  "
                          f"cpu {one.server_cpu_ms} ms/notification", file=sys.stderr)
                    runs.append(one)
        return runs


def median_run(runs: list[runner.Run], name: str) -> runner.Run:
    mine = sorted((r for r in runs if r.handler == name), key=lambda r: r.per_second)
    return mine[(len(mine) - 1) // 2]


def ratios_of(chosen: dict[str, runner.Run], name: str) -> dict[str, float]:
    """Ratios of the median rounds (each handler's own median round; not necessarily the same round)."""
    mine = chosen[name].per_second
    return {f"vs_{ref}": round(mine / chosen[ref].per_second, 3) for ref in runner.REFERENCES}


def paired_ratios(runs: list[runner.Run], name: str) -> dict[str, list[float]]:
    """Per round, `name`'s rate over each reference's rate in that same round."""
    by_round: dict[int, dict[str, float]] = {}
    for r in runs:
        by_round.setdefault(r.round, {})[r.handler] = r.per_second
    return {f"vs_{ref}": [round(rates[name] / rates[ref], 3) for _, rates in sorted(by_round.items())]
            for ref in runner.REFERENCES}


def median_paired(runs: list[runner.Run], name: str) -> dict[str, float]:
    """The median over rounds of the per-round ratios: what the targets are checked against."""
    return {key: round(statistics.median(values), 3) for key, values in paired_ratios(runs, name).items()}


def end_to_end(r: runner.Run) -> float | None:
    """Notifications per second from the first sent until every payment is `synced` (payflow only)."""
    if r.drain_seconds is None or not r.acked:
        return None
    return round(r.acked / (r.seconds + r.drain_seconds), 1)


def _loadavg() -> str:
    return " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])


def _variant(text: str) -> runner.Handler:
    name, sep, path = text.partition("=")
    root = pathlib.Path(path).resolve()
    if not sep or not name or not (root / "run.py").is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=CHECKOUT (a directory holding run.py)")
    return runner.Handler(f"payflow@{name}", runner.PAYFLOW, root)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notifications", type=int, default=10_000, help="timed notifications per handler")
    parser.add_argument("--warmup", type=int, default=None, help="untimed notifications first (default N/10)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=None, help="runs of every handler (default 5; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="3,000 notifications, one round (well under 60 s)")
    parser.add_argument("--variant", type=_variant, action="append", default=[], metavar="NAME=CHECKOUT",
                        help="also run `run.py serve` from CHECKOUT (e.g. a scratch copy with a proposed change)")
    parser.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="PAYFLOW_LOG_LEVEL of `serve` (default WARNING: the notify path, not log rendering)")
    parser.add_argument("--json", type=pathlib.Path, default=pathlib.Path("bench/results/notify_throughput.json"))
    args = parser.parse_args()
    logs.configure_logging("json", level="WARNING")
    # SIGTERM unwinds like Ctrl-C, so every child process is stopped and the temporary files removed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    n = 3000 if args.quick else args.notifications
    warmup = args.warmup if args.warmup is not None else max(300, n // 10)
    rounds = args.rounds or (1 if args.quick else 5)
    handlers = [runner.Handler(runner.PAYFLOW, runner.PAYFLOW), *args.variant,
                *(runner.Handler(ref, ref) for ref in runner.REFERENCES)]
    started, load_before = time.perf_counter(), _loadavg()
    runs = asyncio.run(run(handlers, n, warmup, args.concurrency, rounds, args.log_level))
    wall, load_after = time.perf_counter() - started, _loadavg()
    chosen = {h.name: median_run(runs, h.name) for h in handlers}

    print(f"{n} notifications per handler after {warmup} warm-up, concurrency {args.concurrency}, "
          f"{rounds} round(s), median round shown, payflow at PAYFLOW_LOG_LEVEL={args.log_level}")
    width = max(30, *(len(h.label) + 2 for h in handlers))
    print(f"{'handler':<{width}}{'acked/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>7}{'durable':>8}{'drain s':>8}"
          f"{'synced/s':>9}{'srv CPU%':>9}{'CPU ms/n':>9}{'gen CPU%':>9}")
    for h in handlers:
        r = chosen[h.name]
        drain = "" if r.drain_seconds is None else r.drain_seconds
        synced = "" if end_to_end(r) is None else end_to_end(r)
        print(f"{h.label:<{width}}{r.per_second:>9}{r.p50_ms:>9}{r.p99_ms:>9}{sum(r.errors.values()):>7}"
              f"{'yes' if r.durable else 'NO':>8}{drain:>8}{synced:>9}{r.server_cpu_pct:>9}{r.server_cpu_ms:>9}"
              f"{r.loadgen_cpu_pct:>9}")
    print("drain s: after the last 204, until every payment is `synced` (payflow forwards after acknowledging); "
          "synced/s: notifications / (drive + drain), payflow's rate from notification to backend acknowledgement")
    payflows = [h.name for h in handlers if h.kind == runner.PAYFLOW]
    ratios = {name: median_paired(runs, name) for name in payflows}
    per_round = {name: paired_ratios(runs, name) for name in payflows}
    of_medians = {name: ratios_of(chosen, name) for name in payflows}
    main_ratios = ratios[runner.PAYFLOW]
    met = {"vs_group": main_ratios["vs_group"] >= TARGET_GROUP, "vs_txn": main_ratios["vs_txn"] >= TARGET_TXN}
    print("ratios: per round, payflow's rate over the reference's in the same round; the median of those is "
          "checked against the targets (the ratio of the median rounds above is shown after it)")
    for name, r in ratios.items():
        who = "payflow" if name == runner.PAYFLOW else f"payflow [{name.partition('@')[2]}]"
        rounds_text = ", ".join(f"{x:.2f}" for x in per_round[name]["vs_group"])
        print(f"{who}: {r['vs_group']:.2f} x group-commit reference (target >= {TARGET_GROUP}: "
              f"{'met' if r['vs_group'] >= TARGET_GROUP else 'NOT met'}; rounds {rounds_text}; median rounds "
              f"{of_medians[name]['vs_group']:.2f}), {r['vs_txn']:.2f} x txn-per-request reference (target >= "
              f"{TARGET_TXN}: {'met' if r['vs_txn'] >= TARGET_TXN else 'NOT met'}), "
              f"{r['vs_nodb']:.2f} x the no-database ceiling")
    pf = chosen[runner.PAYFLOW]
    per_notification = pf.log_lines / (pf.notifications + warmup)
    print(f"payflow logged {per_notification:.1f} lines ({pf.log_bytes / (pf.notifications + warmup):.0f} bytes) "
          f"per notification")
    errors = {r.handler: r.errors for r in runs if r.errors}
    if errors:
        print(f"non-204 answers: {errors}")
    print(f"wall time {wall:.1f} s; load average {load_before} before, {load_after} after, on "
          f"{procs.cpu_count()} CPUs (other busy processes skew throughput; CPU ms/n much less)")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": procs.cpu_count(), "python": platform.python_version(),
                    "sqlite": sqlite3.sqlite_version, "platform": platform.platform()},
        "params": {"notifications": n, "warmup": warmup, "concurrency": args.concurrency, "rounds": rounds,
                   "log_level": args.log_level,
                   "variants": {h.name: str(h.root) for h in args.variant}},
        "summary": {name: {**dataclasses.asdict(r), "synced_per_second": end_to_end(r)} for name, r in chosen.items()},
        "ratios": ratios, "ratios_per_round": per_round, "ratios_of_median_rounds": of_medians,
        "targets": {"vs_group": TARGET_GROUP, "vs_txn": TARGET_TXN}, "met": met,
        "per_round": {h.name: [r.per_second for r in runs if r.handler == h.name] for h in handlers},
        "median_per_second": {h.name: statistics.median(r.per_second for r in runs if r.handler == h.name)
                              for h in handlers},
        "runs": [dataclasses.asdict(r) for r in runs],
        "wall_seconds": round(wall, 1), "loadavg_before": load_before, "loadavg_after": load_after,
    }, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
