"""A small round-robin HTTP proxy in front of several payflow replicas (what a load balancer does).

A replica that refuses the connection or drops it before answering is skipped and the request is
tried on the next one; payflow's write endpoints are idempotent (order_id, notification id), so
a retry after a replica died mid-request is safe.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence

import aiohttp
from aiohttp import web

from payflow import logs

log = logs.get_logger(__name__)

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
                        "transfer-encoding", "upgrade", "host", "content-length"})
UPSTREAMS = web.AppKey("UPSTREAMS", list)
SESSION = web.AppKey("SESSION", aiohttp.ClientSession)
STATS = web.AppKey("STATS", dict)


def create_app(upstreams: Sequence[str], *, timeout: float = 30.0) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    app[UPSTREAMS] = list(upstreams)
    app[STATS] = {"forwarded": 0, "retried": 0, "failed": 0}
    rotation = itertools.cycle(range(len(upstreams)))

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout), auto_decompress=False)
        yield
        await app[SESSION].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        stats = request.app[STATS]
        for attempt in range(len(upstreams)):
            base = upstreams[next(rotation)]
            try:
                async with request.app[SESSION].request(request.method, f"{base}{request.path_qs}", data=body,
                                                        headers=headers, allow_redirects=False) as answer:
                    payload = await answer.read()
                    stats["forwarded"] += 1
                    return web.Response(status=answer.status, body=payload, headers={
                        k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP})
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                stats["retried"] += 1
                log.info("proxy.upstream_failed", upstream=base, attempt=attempt + 1, error=type(exc).__name__)
        stats["failed"] += 1
        return web.json_response({"error": {"code": "no_upstream", "message": "no payflow replica answered"}},
                                 status=502)

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app
