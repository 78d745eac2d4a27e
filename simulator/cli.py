"""The `payflow` command (and `python run.py`, the same from a checkout): argument parsing, then the entry points
of payflow and of the simulators.

It lives here rather than in payflow/ because it composes both (`serve --dev`, `simulate-chaos`, `wechat-sim`,
`backend-sim`), and payflow never imports simulator (ruff's TID251 enforces it); simulator already builds on
payflow. Imports happen per command, so `payflow inspect` does not load the chaos driver.
"""

from __future__ import annotations

import argparse
import os
import sys

import payflow


def parser() -> argparse.ArgumentParser:
    from payflow import settings as payflow_settings
    from simulator.backend import server as backend_sim
    from simulator.chaos import cli as chaos
    from simulator.wechat import server as wechat_sim

    parser = argparse.ArgumentParser(description="payflow: a WeChat Pay gateway")
    parser.add_argument("--version", action="version", version=f"payflow {payflow.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keys = commands.add_parser("keys", help="write a development key set (and payflow.env) to DIR")
    keys.add_argument("dir", metavar="DIR")

    serve = commands.add_parser("serve", help="run payflow (configured by PAYFLOW_* variables)",
                                epilog=payflow_settings.help_text(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--host", help="bind address (default: PAYFLOW_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: PAYFLOW_PORT or 8080; 0 picks a free one)")
    serve.add_argument("--dev", action="store_true",
                       help="development mode: keys in ./.payflow-dev/, both simulators in-process on loopback")

    backup = commands.add_parser(
        "backup", help="a consistent copy of the SQLite store, safe while serve runs (PostgreSQL: pg_dump)",
        description="Copy the SQLite store named by PAYFLOW_DATABASE_URL to DEST with SQLite's backup API: one "
                    "consistent snapshot, taken while serve keeps writing. DEST is replaced only by a complete, "
                    "checked copy. Exit 0 on success, 1 if the copy failed, 2 if there is nothing to copy "
                    "(no store, or a PostgreSQL URL).")
    backup.add_argument("dest", metavar="DEST", help="the file to write (replaced atomically if it exists)")

    reconcile = commands.add_parser("reconcile", help="reconcile one day's WeChat trade bill against the store")
    reconcile.add_argument("--date", required=True, metavar="YYYY-MM-DD", help="the bill date (Asia/Shanghai)")
    reconcile.add_argument("--json", action="store_true", help="print the report as JSON")

    inspect = commands.add_parser("inspect", help="one payment's state, schedule and timeline")
    inspect.add_argument("out_trade_no", metavar="OUT_TRADE_NO")
    inspect.add_argument("--json", action="store_true", help="print it as JSON")

    chaos.add_arguments(commands.add_parser(
        "simulate-chaos", help="the whole topology with faults and crashes; checks the invariants"))
    wechat_sim.add_arguments(commands.add_parser("wechat-sim", help="run the WeChat Pay simulator alone"))
    backend_sim.add_arguments(commands.add_parser("backend-sim", help="run the business backend simulator alone"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "keys":
        from payflow import devkeys

        try:
            keys = devkeys.write_keyset(args.dir)
        except (devkeys.KeySetError, OSError) as exc:
            print(f"keys: {exc}", file=sys.stderr)
            return 2
        print(f"wrote a development key set to {keys.directory} (load it with: set -a; . {keys.directory}/payflow.env)")
        return 0
    if args.command == "serve":
        if args.dev:
            from simulator import devserver

            return devserver.run(host=args.host, port=args.port)
        from payflow import server

        return server.run_serve(os.environ, host=args.host, port=args.port)
    if args.command == "backup":
        from payflow import commands as payflow_commands

        return payflow_commands.backup(os.environ, args.dest)
    if args.command == "reconcile":
        from payflow import commands as payflow_commands

        return payflow_commands.reconcile(os.environ, args.date, as_json=args.json)
    if args.command == "inspect":
        from payflow import commands as payflow_commands

        return payflow_commands.inspect(os.environ, args.out_trade_no, as_json=args.json)
    if args.command == "simulate-chaos":
        from simulator.chaos import cli as chaos

        return chaos.main(args)
    if args.command == "wechat-sim":
        from simulator.wechat import server as wechat_sim

        return wechat_sim.main(args)
    if args.command == "backend-sim":
        from simulator.backend import server as backend_sim

        return backend_sim.main(args)
    raise AssertionError(f"unhandled command {args.command}")
