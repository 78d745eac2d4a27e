"""`run.py simulate-chaos [--orders N] [--seed S] [--json FILE] [--plot FILE] [--strategy payflow|naive]
[--compare] [fault flags]`: exit 0 only when every invariant holds (with --compare: payflow's result)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import pathlib
import sys

from payflow import logs
from simulator.backend.faults import BackendFaults, FaultPlanError
from simulator.chaos import report
from simulator.chaos.driver import simulate
from simulator.chaos.scenario import DB_RESTART_COMMAND, Options
from simulator.wechat import faults as wechat_faults

# Faults are on by default (each a flag): notifications dropped 30% (5% never delivered), delayed,
# duplicated 10%, reordered, signature probes; WeChat API 5xx/429 at a few percent.
CHAOS_WECHAT = {"drop_first": 0.3, "drop_retry": 0.3, "never_deliver": 0.05, "delay_min": 0.0, "delay_max": 30.0,
                "duplicate": 0.1, "reorder": 0.05, "probe": 0.05, "corrupt_signature": 0.02, "api_500": 0.03,
                "api_429": 0.02, "api_500_applied": 0.5}
# WeChat's own per-API limits, at 1.5 times payflow's default budgets (ratelimit.DEFAULT_BUDGETS) rather
# than WeChat's real figures, so that the run shows payflow's budgets keeping it under them.
CHAOS_WECHAT.update(limit_jsapi=150.0, limit_query=450.0, limit_close=150.0, limit_bill=20.0, limit_refund=225.0,
                    limit_refund_query=450.0)
# Refunds stay PROCESSING for two minutes of WeChat's time (2 s at the default time factor) before they succeed,
# so that payflow follows them by notification and by query. Not a fault: it stays under --no-faults.
CHAOS_WECHAT.update(refund_delay=120.0)
# Backend 500s 20%, an outage window, applied-but-answer-lost 5% (held past payflow's 1 s timeout).
CHAOS_BACKEND = BackendFaults(error_rate=0.2, outages=((8.0, 14.0),), lost_answer_rate=0.05, stall_seconds=2.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--orders", type=int, default=300, help="payers (default 300)")
    parser.add_argument("--seed", type=int, default=1, help="scenario and fault seed (default 1)")
    parser.add_argument("--placement-rate", type=float, default=Options.placement_rate, metavar="PER_S",
                        help="payers arriving per second at most, below payflow's place-order budget "
                             "(default %(default)g; creations spread over 15 s at least)")
    parser.add_argument("--json", type=pathlib.Path, metavar="FILE", help="write the full report as JSON")
    parser.add_argument("--plot", type=pathlib.Path, metavar="FILE",
                        help="write a PNG (time-to-consistency CDF, payments by state); needs the plot extra")
    parser.add_argument("--strategy", choices=("payflow", "naive"), default="payflow",
                        help="naive: the seed's design by configuration (forward once, no sweeper)")
    parser.add_argument("--compare", action="store_true", help="run payflow and naive on the same seed")
    parser.add_argument("--key-mode", choices=("pubkey", "certificates", "both"), default=Options.key_mode,
                        help="how WeChat signs and payflow verifies (default %(default)s: the migration from "
                             "platform certificates to the public key, with a certificate rotation mid-run)")
    parser.add_argument("--no-rotation", action="store_true", help="no platform certificate rotation mid-run")
    parser.add_argument("--crashes", type=int, default=2, help="SIGKILLs of payflow during the run (default 2)")
    parser.add_argument("--no-faults", action="store_true", help="turn every injected fault off (crashes stay)")
    parser.add_argument("--keep", type=pathlib.Path, metavar="DIR", help="keep keys, database and logs in DIR")
    parser.add_argument("--replicas", type=int, default=1,
                        help="payflow processes behind a round-robin proxy (needs --database postgresql://...)")
    parser.add_argument("--database", metavar="URL",
                        help="postgresql://... (each run uses a fresh schema); default: a temporary SQLite file")
    parser.add_argument("--db-restart", action="store_true", help="restart PostgreSQL once mid-run")
    parser.add_argument("--db-restart-command", metavar="CMD", default=DB_RESTART_COMMAND,
                        help="shell command that restarts PostgreSQL and returns once it is back "
                             "(default: %(default)s)")
    wechat_faults.add_arguments(parser)
    parser.set_defaults(**CHAOS_WECHAT)
    BackendFaults.add_arguments(parser, prefix="backend-")


def _options(args: argparse.Namespace, strategy: str) -> Options:
    if args.orders < 1:
        raise ValueError("--orders must be at least 1")
    if not args.placement_rate > 0:
        raise ValueError("--placement-rate must be positive")
    if args.crashes < 0:
        raise ValueError("--crashes must not be negative")
    if args.replicas < 1:
        raise ValueError("--replicas must be at least 1")
    if args.database is not None and not args.database.startswith(("postgresql://", "postgres://")):
        raise ValueError("--database must be a postgresql:// URL")
    if args.replicas > 1 and args.database is None:
        raise ValueError("--replicas > 1 needs a shared database: --database postgresql://...")
    if args.db_restart and args.database is None:
        raise ValueError("--db-restart needs --database postgresql://...")
    wechat = wechat_faults.from_args(args)
    given = BackendFaults.from_args(args, prefix="backend-")
    explicit = {f.name: getattr(given, f.name) for f in dataclasses.fields(BackendFaults)
                if getattr(args, "backend_" + ("outage" if f.name == "outages" else f.name), None) is not None}
    backend = dataclasses.replace(CHAOS_BACKEND, **explicit)
    if args.no_faults:
        # WeChat's per-API limits are how WeChat is, not a fault: they stay.
        limits = {name: getattr(wechat, name) for name in wechat_faults.LIMITS}
        wechat, backend = wechat_faults.WechatFaults(**limits, refund_delay=wechat.refund_delay), BackendFaults()
    return Options(orders=args.orders, seed=args.seed, placement_rate=args.placement_rate, strategy=strategy,
                   key_mode=args.key_mode, rotate_certificates=not args.no_rotation,
                   crashes=args.crashes, wechat=wechat, backend=backend, progress=True, replicas=args.replicas,
                   database=args.database,
                   db_restart=args.db_restart, db_restart_command=args.db_restart_command)


def main(args: argparse.Namespace) -> int:
    try:
        strategies = ("payflow", "naive") if args.compare else (args.strategy,)
        runs = [_options(args, s) for s in strategies]
    except (ValueError, FaultPlanError) as exc:
        print(f"simulate-chaos: {exc}", file=sys.stderr)
        return 2
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("simulate-chaos: --plot needs matplotlib: pip install -e '.[plot]'", file=sys.stderr)
            return 2
    logs.configure_logging("json", level="WARNING")
    outcomes = []
    for options in runs:
        outcome = asyncio.run(simulate(options, keep=args.keep))
        print(file=sys.stderr)
        print(report.render(outcome))
        print()
        outcomes.append(outcome)
    first = outcomes[0]
    if args.compare:
        print(report.compare(outcomes[0], outcomes[1]))
    if args.json is not None:
        report.write_json(first, args.json)
    if args.plot is not None:
        report.write_plot(first, args.plot)
    return 0 if first.ok else 1
