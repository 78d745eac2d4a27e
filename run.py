#!/usr/bin/env python3
"""payflow command line: argument parsing only; the work happens in payflow and simulator."""

from __future__ import annotations

import argparse
import os
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run.py", description="payflow: a WeChat Pay gateway")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run payflow (configured by PAYFLOW_* variables)")
    serve.add_argument("--host", help="bind address (default: PAYFLOW_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: PAYFLOW_PORT or 8080; 0 picks a free one)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from payflow import server

        return server.run_serve(os.environ, host=args.host, port=args.port)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
