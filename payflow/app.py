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


def create_app(
    settings: Settings,
    *,
    store: PaymentStore | None = None,
    wechat: WechatApi | None = None,
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

    async def service_ctx(app: web.Application) -> AsyncIterator[None]:
        app[keys.SERVICE] = PaymentService(app[keys.STORE], settings, wechat=wechat, clock=clock)
        yield

    app.cleanup_ctx.extend([store_ctx, service_ctx])
    routes.setup(app)
    return app
