"""`run.py serve --dev`: payflow wired to both bundled simulators, in one process, on loopback.

Keys live in ./.payflow-dev/ (created on first use); nothing here is fit for real money.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pathlib
import signal
import sys
from collections.abc import Callable

from aiohttp import web

from payflow import devkeys, errors, logs
from payflow.app import create_app
from payflow.settings import Settings
from simulator import backend as backend_sim
from simulator.wechat.app import create_app as create_wechat_sim

log = logs.get_logger(__name__)

DEV_DIR = pathlib.Path(".payflow-dev")
DEMO_ORDER = "DEMO0000000001"
DEMO_BODY = json.dumps({"order_id": "demo-1", "amount": 1999, "description": "Demo", "openid": "oDemoPayer",
                        "out_trade_no": DEMO_ORDER})


def dev_settings(keys: devkeys.KeySet, *, host: str, port: int, wechat_url: str, backend_url: str,
                 database: pathlib.Path) -> Settings:
    env = devkeys.env_lines(keys, payflow_url=f"http://{host}:{port}", wechat_url=wechat_url,
                            backend_url=backend_url)
    env["PAYFLOW_DATABASE_URL"] = f"sqlite:///{database.resolve()}"
    settings = Settings.from_env(env)
    return dataclasses.replace(settings, host=host, port=port, sweep_interval=1.0)


async def _start(app: web.Application, host: str, port: int, name: str) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise errors.SettingsError(f"{name}: cannot listen on {host}:{port}: {exc.strerror}") from None
    address = runner.addresses[0]
    return runner, f"http://{address[0]}:{address[1]}"


async def serve_dev(
    host: str,
    port: int,
    directory: pathlib.Path = DEV_DIR,
    *,
    stop: asyncio.Event | None = None,
    sim_ports: tuple[int, int] = (devkeys.DEFAULT_WECHAT_SIM_PORT, devkeys.DEFAULT_BACKEND_SIM_PORT),
    on_ready: Callable[[dict[str, str]], None] | None = None,
) -> None:
    """Serve payflow and both simulators until `stop` (or SIGINT/SIGTERM); `on_ready` gets the URLs."""
    keys = devkeys.load_keyset(directory) if (directory / "keys.json").exists() else devkeys.write_keyset(directory)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runners: list[web.AppRunner] = []
    try:
        wechat_runner, wechat_url = await _start(create_wechat_sim(keys), host, sim_ports[0], "wechat simulator")
        runners.append(wechat_runner)
        backend_runner, backend_base = await _start(backend_sim.create_app(keys.backend_secret), host,
                                                    sim_ports[1], "backend simulator")
        runners.append(backend_runner)
        settings = dev_settings(keys, host=host, port=port, wechat_url=wechat_url,
                                backend_url=f"{backend_base}{devkeys.BACKEND_SIM_PATH}",
                                database=directory / "payflow.db")
        payflow_runner, payflow_url = await _start(create_app(settings), host, port, "payflow")
        runners.append(payflow_runner)
        print(_instructions(keys, payflow_url, wechat_url, backend_base), flush=True)
        log.info("dev.ready", payflow=payflow_url, wechat_sim=wechat_url, backend_sim=backend_base,
                 keys=str(keys.directory))
        if on_ready is not None:
            on_ready({"payflow": payflow_url, "wechat": wechat_url, "backend": backend_base})
        await stop.wait()
    finally:
        # payflow first, so its sweeper and forwards stop before the simulators they talk to.
        for runner in reversed(runners):
            await runner.cleanup()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _instructions(keys: devkeys.KeySet, payflow: str, wechat: str, backend: str) -> str:
    api = f'-H "Authorization: Bearer {keys.api_token}"'
    admin = f'-H "Authorization: Bearer {keys.admin_token}"'
    return f"""
payflow (dev) is up: payflow {payflow} · WeChat Pay simulator {wechat} · backend simulator {backend}
Keys and the database are in {keys.directory}. Try:

  # 1. the business creates a payment
  curl -s -X POST {payflow}/v1/payments {api} -H 'Content-Type: application/json' -d '{DEMO_BODY}'
  # 2. the simulated payer pays at WeChat
  curl -s -X POST {wechat}/sim/v1/transactions/{DEMO_ORDER}/pay
  # 3. the payer's page polls the status
  curl -s {payflow}/v1/payments/{DEMO_ORDER} {api}
  # 4. the timeline, and what the backend received
  curl -s {payflow}/v1/payments/{DEMO_ORDER}/events {admin}
  curl -s {backend}/sim/v1/orders

Operator console: {payflow}/console/  (sign in with the admin token {keys.admin_token})

Stop with Ctrl-C.
"""


def run(*, host: str | None, port: int | None) -> int:
    logs.configure_logging()
    try:
        asyncio.run(serve_dev(host or "127.0.0.1", port if port is not None else devkeys.DEFAULT_PAYFLOW_PORT))
    except (errors.SettingsError, devkeys.KeySetError) as exc:
        print(f"serve --dev: {exc}", file=sys.stderr)
        return 2
    return 0
