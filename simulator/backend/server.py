"""`run.py backend-sim`: load a key set, serve the backend simulator on a TCP site, stop cleanly on
SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from aiohttp import web

from payflow import devkeys, logs
from simulator.backend.app import create_app
from simulator.backend.faults import BackendFaults, FaultPlanError

log = logs.get_logger(__name__)

EXIT_CONFIG = 2


async def serve(
    secret: str,
    *,
    host: str = "127.0.0.1",
    port: int = devkeys.DEFAULT_BACKEND_SIM_PORT,
    faults: BackendFaults | None = None,
    seed: int = 0,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until `stop` is set; without `stop`, until SIGINT/SIGTERM (handlers installed only then)."""
    own_signals = stop is None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if own_signals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
    app = create_app(secret, faults=faults, seed=seed)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        # With port 0 the OS picks; this line is how a supervisor (or a test) learns the real port.
        addresses = [f"{a[0]}:{a[1]}" for a in runner.addresses]
        log.info("backend_sim.listening", addresses=addresses, path=devkeys.BACKEND_SIM_PATH, seed=seed,
                 faults=(faults or BackendFaults()).to_json())
        await stop.wait()
        log.info("backend_sim.stopping")
    finally:
        await runner.cleanup()
        if own_signals:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
    log.info("backend_sim.stopped")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keys", required=True, metavar="DIR", help="key directory written by `run.py keys`")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=devkeys.DEFAULT_BACKEND_SIM_PORT,
                        help=f"port (default {devkeys.DEFAULT_BACKEND_SIM_PORT}; 0 picks a free one)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault dice (default 0)")
    BackendFaults.add_arguments(parser)


def main(args: argparse.Namespace) -> int:
    """`run.py backend-sim`: exit 2 on a bad key directory or fault plan, 1 if it cannot bind, else 0."""
    try:
        keys = devkeys.load_keyset(args.keys)
        faults = BackendFaults.from_args(args)
    except (devkeys.KeySetError, FaultPlanError) as exc:
        print(f"backend-sim: cannot start: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logs.configure_logging()
    try:
        asyncio.run(serve(keys.backend_secret, host=args.host, port=args.port, faults=faults, seed=args.seed))
    except OSError as exc:
        log.error("backend_sim.failed", error=str(exc))
        return 1
    return 0
