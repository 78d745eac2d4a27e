"""`create_app()`: the aiohttp application. No I/O here; resources open and close in cleanup contexts."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from payflow.clock import Clock
from payflow.http import keys, middlewares, routes
from payflow.service import PaymentService
from payflow.settings import Settings
from payflow.store import PaymentStore, open_store
from payflow.wechat.api import WechatApi
from payflow.wechat.client import WechatPayClient
from payflow.wechat.notify import NotificationVerifier


def _missing_wechat(settings: Settings) -> bool:
    return not all((settings.wechat_mchid, settings.wechat_appid, settings.wechat_mch_serial,
                    settings.wechat_mch_key_file, settings.wechat_pubkey_id, settings.wechat_pubkey_file))


def create_app(
    settings: Settings,
    *,
    store: PaymentStore | None = None,
    wechat: WechatApi | None = None,
    verifier: NotificationVerifier | None = None,
    clock: Clock | None = None,
) -> web.Application:
    """Build the app. Injected resources are used as they are and not closed by the app."""
    app = web.Application(
        middlewares=[
            middlewares.request_id_middleware,
            middlewares.error_middleware,
            middlewares.auth_middleware,
            middlewares.body_limit_middleware,
        ],
        client_max_size=settings.max_body_bytes,
    )
    app[keys.SETTINGS] = settings

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        owned = store is None
        app[keys.STORE] = store if store is not None else await open_store(settings.database_url)
        try:
            yield
        finally:
            if owned:
                await app[keys.STORE].close()

    async def wechat_ctx(app: web.Application) -> AsyncIterator[None]:
        client = None
        if wechat is None and not _missing_wechat(settings):
            client = WechatPayClient.from_settings(settings)
        app[keys.WECHAT] = wechat if wechat is not None else client
        try:
            yield
        finally:
            if client is not None:
                await client.aclose()

    async def service_ctx(app: web.Application) -> AsyncIterator[None]:
        app[keys.SERVICE] = PaymentService(
            app[keys.STORE], settings, wechat=app[keys.WECHAT],
            verifier=verifier if verifier is not None else NotificationVerifier.from_settings(settings),
            clock=clock)
        yield

    app.cleanup_ctx.extend([store_ctx, wechat_ctx, service_ctx])
    routes.setup(app)
    return app
