"""`create_app()`: the aiohttp application. No I/O here; resources open and close in cleanup contexts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Protocol, TypeVar

from aiohttp import web

from payflow import console
from payflow.backend import Backend, BackendClient
from payflow.clock import Clock
from payflow.http import keys, middlewares, routes
from payflow.metrics import Metrics
from payflow.ratelimit import Budgets, Priority
from payflow.reconcile import DailySchedule, Reconciler
from payflow.service import PaymentService
from payflow.service.unconfigured import UnconfiguredBackend, UnconfiguredWechat
from payflow.settings import Settings
from payflow.store import PaymentStore, open_store
from payflow.sweeper import Sweeper
from payflow.wechat import trust
from payflow.wechat.api import WechatApi
from payflow.wechat.certificates import KeyRing
from payflow.wechat.client import WechatPayClient
from payflow.wechat.notify import NotificationVerifier, Verifier


@contextlib.asynccontextmanager
async def _running(run: Callable[[asyncio.Event], Coroutine[Any, Any, None]], name: str, *,
                   grace: float) -> AsyncIterator[None]:
    """Run a background loop for the life of the block; on exit ask it to stop and wait, and cancel
    only what is still running after `grace` (a pass that is stuck)."""
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(run(stop), name=name)
    try:
        yield
    finally:
        stop.set()
        done, _ = await asyncio.wait({task}, timeout=grace)
        if not done:
            task.cancel()
            await asyncio.wait({task})


class _Closable(Protocol):
    async def aclose(self) -> None: ...


_C = TypeVar("_C", bound=_Closable)


def _owned(stack: contextlib.AsyncExitStack, client: _C | None) -> _C | None:
    """`client`, closed when `stack` closes; None passes through (that side is not configured)."""
    if client is not None:
        stack.push_async_callback(client.aclose)
    return client


def _wechat_client(settings: Settings, metrics: Metrics, ring: KeyRing | None) -> WechatPayClient | None:
    if _missing_wechat(settings) or ring is None:
        return None
    # A payer waits for WeChat's budget at most half the call timeout (so a create answers within about
    # PAYFLOW_WECHAT_TIMEOUT); background work at most half a lease (a claimed payment is never held).
    waits = {Priority.PAYER: settings.wechat_timeout / 2, Priority.BACKGROUND: settings.lease / 2}
    budgets = Budgets(dict(settings.wechat_budgets), default=settings.wechat_rate, waits=waits)
    return WechatPayClient.from_settings(settings, keys=ring, timeout=settings.wechat_timeout, limiter=budgets,
                                         metrics=metrics)


def _backend_client(settings: Settings) -> BackendClient | None:
    if not (settings.backend_url and settings.backend_secret):
        return None
    return BackendClient(settings.backend_url, settings.backend_secret, timeout=settings.backend_timeout)


def _missing_wechat(settings: Settings) -> bool:
    public_key = (settings.wechat_pubkey_id, settings.wechat_pubkey_file) if trust.uses_public_key(settings) else ()
    return not all((settings.wechat_mchid, settings.wechat_appid, settings.wechat_mch_serial,
                    settings.wechat_mch_key_file, *public_key))


def _key_ring(settings: Settings) -> KeyRing | None:
    """The one ring the client and the verifier share, or None when WeChat is not configured."""
    if _missing_wechat(settings):
        return None
    return trust.key_ring(settings)


def create_app(
    settings: Settings,
    *,
    store: PaymentStore | None = None,
    wechat: WechatApi | None = None,
    verifier: Verifier | None = None,
    backend: Backend | None = None,
    clock: Clock | None = None,
    metrics: Metrics | None = None,
    run_sweeper: bool = True,
) -> web.Application:
    """Build the app. Injected resources are used as they are and not closed by the app.

    Tests that drive the sweeper themselves (`Sweeper.run_once()`) pass `run_sweeper=False`.
    """
    app = web.Application(
        middlewares=[middlewares.api_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = metrics or Metrics()

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        owned = store is None
        app[keys.STORE] = store if store is not None else await open_store(settings.database_url)
        try:
            yield
        finally:
            if owned:
                await app[keys.STORE].close()

    async def clients_ctx(app: web.Application) -> AsyncIterator[None]:
        """WeChat Pay and the backend: an injected client as it is (the app does not close what it did not
        open); otherwise one built from the settings and closed on exit; otherwise a null object."""
        async with contextlib.AsyncExitStack() as owned:
            ring = _key_ring(settings) if wechat is None or verifier is None else None
            client = None if wechat is not None else _owned(owned, _wechat_client(settings, app[keys.METRICS], ring))
            app[keys.WECHAT] = wechat if wechat is not None else client or UnconfiguredWechat()
            app[keys.BACKEND] = (backend if backend is not None else
                                 _owned(owned, _backend_client(settings)) or UnconfiguredBackend())
            app[keys.KEY_RING] = ring
            kept = None if client is None or ring is None else trust.keeper(settings, ring,
                                                                             client.download_certificates)
            if kept is not None and run_sweeper:
                # Certificates kept current beside the sweeper: on a schedule, and soon after an unknown serial.
                await owned.enter_async_context(_running(kept.run, "wechat-certificates",
                                                         grace=settings.wechat_timeout + 1))
            yield

    async def service_ctx(app: web.Application) -> AsyncIterator[None]:
        service = PaymentService(
            app[keys.STORE], settings, wechat=app[keys.WECHAT], backend=app[keys.BACKEND],
            verifier=verifier if verifier is not None else NotificationVerifier.from_settings(
                settings, keys=app[keys.KEY_RING]) if app[keys.KEY_RING] is not None else None,
            clock=clock, metrics=app[keys.METRICS])
        app[keys.SERVICE] = service
        yield
        # In-flight forwards get a grace period; one cut short is redone by a sweeper (the row is the outbox).
        await service.drain(grace=settings.backend_timeout + 1)

    async def sweeper_ctx(app: web.Application) -> AsyncIterator[None]:
        if settings.sweep_interval <= 0 or not run_sweeper:
            yield
            return
        async with _running(Sweeper(app[keys.SERVICE]).run, "sweeper",
                            grace=settings.backend_timeout + settings.wechat_timeout + 1):
            yield

    async def reconcile_ctx(app: web.Application) -> AsyncIterator[None]:
        client = app[keys.WECHAT]
        if settings.reconcile_at is None or not run_sweeper or not isinstance(client, WechatPayClient):
            yield
            return
        schedule = DailySchedule(Reconciler(app[keys.SERVICE], client), settings.reconcile_at)
        async with _running(schedule.run, "reconcile-schedule", grace=settings.wechat_timeout + 1):
            yield

    app.cleanup_ctx.extend([store_ctx, clients_ctx, service_ctx, sweeper_ctx, reconcile_ctx])
    routes.setup(app)
    if settings.console:
        console.setup(app)
    return app
