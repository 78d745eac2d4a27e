"""`run.py serve`: check the settings, run the app on a TCP site, stop cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import signal
import sys
from collections.abc import Mapping

from aiohttp import web

from payflow import errors, logs
from payflow.app import create_app
from payflow.http import middlewares
from payflow.settings import Settings

log = logs.get_logger(__name__)

EXIT_CONFIG = 2


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    """How long and how much a client may take on the public port (WeChat's notifications arrive on it), so
    that slow or idle connections cannot pile up. Seconds and bytes.

    aiohttp 3.14 has no header-read timeout of its own, but its keep-alive timer runs from the moment a
    connection opens (and again from each answer) and is not pushed back by arriving bytes: `keepalive`
    therefore bounds the idle time *and* the time to send a complete request head. `body` bounds reading the
    body once the head is in (the middleware reads it, answering 408); after an early answer aiohttp drains an
    unread body for at most `lingering`. Not bounded here: how slowly a client reads the (small) answer.
    The sizes are aiohttp's defaults (a longer line or field is a 400), spelled out to be settable."""

    keepalive: float = 15.0
    body: float = middlewares.DEFAULT_BODY_TIMEOUT
    lingering: float = 2.0
    max_line_size: int = 8190
    max_field_size: int = 8190
    max_headers: int = 128


def make_runner(app: web.Application, limits: ConnectionLimits) -> web.AppRunner:
    """The runner `serve` runs `app` with: aiohttp's connection limits, and the body deadline for the middleware."""
    app[middlewares.BODY_TIMEOUT] = limits.body
    return web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=limits.keepalive,
                         lingering_time=limits.lingering, max_line_size=limits.max_line_size,
                         max_field_size=limits.max_field_size, max_headers=limits.max_headers)


def check_serve_settings(settings: Settings) -> list[str]:
    """Every problem that stops `serve` from starting, each naming its variable."""
    problems = [f"{name} is not set" for name in settings.missing_for_serve()]
    for name, path in (("PAYFLOW_WECHAT_MCH_KEY_FILE", settings.wechat_mch_key_file),
                       ("PAYFLOW_WECHAT_PUBKEY_FILE", settings.wechat_pubkey_file)):
        if path is not None and not os.path.isfile(path):
            problems.append(f"{name}: no such file {path!r}")
    return problems


def load_settings(environ: Mapping[str, str]) -> Settings:
    return Settings.from_env(environ)


async def serve(settings: Settings, stop: asyncio.Event | None = None, *, tune_gc: bool = False,
                limits: ConnectionLimits = ConnectionLimits()) -> None:
    """Serve until `stop` is set (SIGINT/SIGTERM set it). Cleanup contexts close in reverse order.

    `tune_gc` (the `serve` command; not for callers sharing the process) freezes what startup built and
    makes the cyclic garbage collector run less often.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    app = create_app(settings)
    runner = make_runner(app, limits)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        # With port 0 the OS picks; the log line is how a supervisor (or a test) learns the real port.
        addresses = [f"{a[0]}:{a[1]}" for a in runner.addresses]
        log.info("serve.listening", addresses=addresses, database=logs.redact_url(settings.database_url))
        if tune_gc:
            _tune_gc()
        await stop.wait()
        log.info("serve.stopping")
    finally:
        await runner.cleanup()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    log.info("serve.stopped")


def run_serve(environ: Mapping[str, str], *, host: str | None, port: int | None) -> int:
    try:
        settings = load_settings(environ)
    except errors.SettingsError as exc:
        return _config_error([str(exc)])
    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if overrides:
        settings = dataclasses.replace(settings, **overrides)  # type: ignore[arg-type]
    problems = check_serve_settings(settings)
    if problems:
        return _config_error(problems)
    logs.configure_logging(settings.log_format, settings.log_level)
    try:
        asyncio.run(serve(settings, tune_gc=True))
    except errors.SettingsError as exc:
        return _config_error([str(exc)])
    except errors.PayflowError as exc:
        log.error("serve.failed", error=exc.code, message=str(exc))
        return 1
    return 0


def _tune_gc() -> None:
    """Everything startup built (modules, the app, keys, settings) lives as long as the process: moved out
    of the collector's sight. Requests allocate many short-lived containers, so young collections run
    every 50,000 allocations instead of 700, and full ones a tenth as often; in a notification burst the
    collector otherwise took about 5% of the loop, mostly rescanning long-lived objects."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _config_error(problems: list[str]) -> int:
    print("payflow serve: cannot start:", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    print("Set them in the environment (see README 'Configuration'), or try everything locally with "
          "`python run.py serve --dev` (bundled simulators, development keys).", file=sys.stderr)
    return EXIT_CONFIG
