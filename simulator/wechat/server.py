"""`run.py wechat-sim`: load a key set, serve the simulator on a TCP site, stop cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from aiohttp import web

from payflow import devkeys, logs
from simulator.wechat import faults as fault_plans
from simulator.wechat.app import create_app
from simulator.wechat.faults import WechatFaults
from simulator.wechat.products import APP_KINDS, DEFAULT_KIND
from simulator.wechat.signing import KeyMode

log = logs.get_logger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = devkeys.DEFAULT_WECHAT_SIM_PORT
EXIT_USAGE = 2


async def serve(
    keys_dir: str | os.PathLike[str],
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    faults: WechatFaults | None = None,
    time_factor: float = 1.0,
    seed: int = 0,
    *,
    stop: asyncio.Event | None = None,
    key_mode: str = "pubkey",
    appids: dict[str, str] | None = None,
) -> None:
    """Serve until `stop` is set (SIGINT/SIGTERM set it). Raises `devkeys.KeySetError` for a bad key dir."""
    keys = devkeys.load_keyset(keys_dir)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    app = create_app(keys, faults=faults, time_factor=time_factor, seed=seed, key_mode=key_mode,
                     appids=appids or {})
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        # With port 0 the OS picks; this line is how a supervisor (or a test) learns the real port.
        addresses = [f"http://{a[0]}:{a[1]}" for a in runner.addresses]
        print(f"wechat-sim listening on {' '.join(addresses)}", flush=True)
        log.info("wechat_sim.listening", addresses=addresses, mchid=keys.mchid, seed=seed, key_mode=key_mode,
                 time_factor=time_factor, faults=(faults or WechatFaults()).to_json())
        await stop.wait()
        log.info("wechat_sim.stopping")
    finally:
        await runner.cleanup()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    log.info("wechat_sim.stopped")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`wechat-sim` options: --keys DIR [--host H] [--port P] [--time-factor F] [--seed S] [--key-mode M]
    [--appid APPID[:KIND]]... [fault flags]."""
    parser.add_argument("--keys", required=True, metavar="DIR", help="key directory (`run.py keys DIR`)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"bind address (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--time-factor", type=float, default=1.0, metavar="F",
                        help="divide notification retry intervals and delays by F (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault plan's dice (default 0)")
    parser.add_argument("--key-mode", choices=[m.value for m in KeyMode], default=KeyMode.PUBKEY.value,
                        help="what WeChat signs with: the public key, platform certificates, or both (migration)")
    parser.add_argument("--appid", action="append", default=[], metavar="APPID[:KIND]",
                        help="bind another appid to the merchant (KIND: official_account, mini_program, app); "
                             "repeatable")
    fault_plans.add_arguments(parser)


def main(args: argparse.Namespace) -> int:
    try:
        plan = fault_plans.from_args(args)
        if args.time_factor <= 0:
            raise ValueError("--time-factor must be positive")
        appids = _appids(args.appid)
    except ValueError as exc:
        print(f"wechat-sim: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure_logging()
    try:
        asyncio.run(serve(args.keys, args.host, args.port, plan, args.time_factor, args.seed,
                          key_mode=args.key_mode, appids=appids))
    except devkeys.KeySetError as exc:
        print(f"wechat-sim: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"wechat-sim: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


def _appids(values: list[str]) -> dict[str, str]:
    appids = {}
    for value in values:
        appid, _, kind = value.partition(":")
        kind = kind or DEFAULT_KIND
        if not appid or kind not in APP_KINDS:
            raise ValueError(f"--appid {value!r}: expected APPID[:KIND], KIND one of {', '.join(APP_KINDS)}")
        appids[appid] = kind
    return appids
