"""`BackendClient.deliver` keeps 2,000 characters of the backend's answer and reads no more than those need."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from payflow.backend import BackendClient
from tests import factories

KEPT = 2000
CHUNK = "界".encode() * 21_846  # 65,538 bytes of a three-byte character
Serve = Callable[[web.Application], Awaitable[TestServer]]


class Flood:
    """A backend answering `status`, then `total` bytes or more, counting what it managed to write."""

    def __init__(self, status: int, total: int, *, block: bool) -> None:
        self.status = status
        self.total = total
        self.block = block  # after `total`, hold the answer open instead of ending it
        self.sent = 0
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=self.status, headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        try:
            while self.sent < self.total:
                await response.write(CHUNK)
                self.sent += len(CHUNK)
            if self.block:
                await self.release.wait()
            await response.write_eof()
        except ConnectionError:
            pass  # payflow hung up once it had enough: what this test wants
        return response


@pytest.fixture
async def backend() -> AsyncIterator[Callable[[str], BackendClient]]:
    made: list[BackendClient] = []

    def make(url: str) -> BackendClient:
        made.append(BackendClient(url, "whsec-test", timeout=5.0))
        return made[-1]

    yield make
    for client in made:
        await client.aclose()


async def _serve(aiohttp_server: Serve, flood: Flood) -> str:
    app = web.Application()
    app.router.add_post("/paid", flood.handle)
    server = await aiohttp_server(app)
    assert server.host == "127.0.0.1"
    return str(server.make_url("/paid"))


async def test_an_answer_that_never_ends_is_not_waited_for(aiohttp_server: Serve, backend: Any) -> None:
    # 256 KiB, then the answer stays open: reading "all of it" would wait for the delivery timeout.
    flood = Flood(422, 4 * len(CHUNK), block=True)
    try:
        url = await _serve(aiohttp_server, flood)
        loop = asyncio.get_running_loop()
        started = loop.time()
        delivery = await backend(url).deliver(factories.payment())
        elapsed = loop.time() - started
    finally:
        flood.release.set()
    assert delivery.outcome == "rejected" and delivery.status == 422 and delivery.error is None
    assert delivery.body == "界" * KEPT  # whole characters, none cut in half at the byte limit
    assert elapsed < 2.5


async def test_a_flood_is_not_read_to_its_end(aiohttp_server: Serve, backend: Any) -> None:
    total = 1024 * len(CHUNK)  # 64 MiB
    flood = Flood(503, total, block=False)
    url = await _serve(aiohttp_server, flood)
    delivery = await backend(url).deliver(factories.payment())
    sent_when_delivered = flood.sent
    assert delivery.outcome == "retry" and delivery.status == 503
    assert delivery.body is not None and len(delivery.body) == KEPT
    # What was written before payflow hung up fits in the socket buffers, far short of the whole answer.
    assert sent_when_delivered < total // 4


@pytest.mark.parametrize(("content_type", "raw", "kept"), [
    ("text/plain; charset=gbk", "库存不足".encode("gbk"), "库存不足"),
    ("application/json", b'{"error":"bad \xff byte"}', '{"error":"bad \ufffd byte"}'),
    ("text/plain; charset=no-such-codec", "短".encode(), "短"),
    ("text/plain", b"", ""),
])
async def test_a_short_answer_is_decoded_by_its_charset(
    aiohttp_server: Serve, backend: Any, content_type: str, raw: bytes, kept: str
) -> None:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(status=409, body=raw, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_post("/paid", handle)
    server = await aiohttp_server(app)
    delivery = await backend(str(server.make_url("/paid"))).deliver(factories.payment())
    assert (delivery.outcome, delivery.status, delivery.body) == ("rejected", 409, kept)
