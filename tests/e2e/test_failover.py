"""WeChat's backup domain, against two WeChat simulators that share one ledger (WeChat's two domains front one
system): the primary killed (the port refuses connections) or stopped (it accepts and never answers)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, unused_port
from prometheus_client.parser import text_string_to_metric_families

from payflow import errors
from payflow.clock import SHANGHAI
from payflow.http import keys as app_keys
from payflow.metrics import Metrics
from payflow.wechat.api import Order
from payflow.wechat.client import WechatPayClient
from payflow.wechat.failover import Breaker
from simulator.wechat.app import create_app as create_wechat_sim
from simulator.wechat.appkeys import BILLS, LEDGER, NOTIFIER
from tests.e2e.conftest import OPENID, World

TIMEOUT = 0.5


@dataclasses.dataclass(frozen=True)
class Seen:
    """One request as it arrived: what the Authorization signed and the body."""

    target: str
    authorization: str
    body: bytes


class StoppedServer:
    """A WeChat that stopped (a SIGSTOPped process, a hung host): the kernel still completes the TCP handshake,
    nobody ever answers. Keeps the bytes of each connection."""

    def __init__(self) -> None:
        self.connections: list[bytearray] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = bytearray()
        self.connections.append(received)
        self._writers.append(writer)
        while chunk := await reader.read(65536):
            received.extend(chunk)

    def seen(self) -> list[Seen]:
        requests = []
        for raw in self.connections:
            head, _, body = bytes(raw).partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines[1:])
            requests.append(Seen(lines[0].split(" ")[1], headers["Authorization"], body))
        return requests

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
def backup_port() -> int:
    return unused_port()


@pytest.fixture
def extra_overrides() -> dict[str, Any]:
    """Settings fields a test changes besides the backup URL (parametrize it)."""
    return {}


@pytest.fixture
def world_overrides(backup_port: int, extra_overrides: dict[str, Any]) -> dict[str, Any]:
    return {"wechat_backup_url": f"http://127.0.0.1:{backup_port}", **extra_overrides}


@pytest.fixture
async def backup(world: World, backup_port: int) -> AsyncIterator[tuple[TestServer, list[Seen]]]:
    """The second simulator, on the backup port, over the first one's ledger and bills; every request it gets."""
    seen: list[Seen] = []

    @web.middleware
    async def record(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        if request.path.startswith("/v3/"):
            seen.append(Seen(request.raw_path, request.headers.get("Authorization", ""), await request.read()))
        return await handler(request)

    app = create_wechat_sim(world.keys, clock=world.wechat_clock, notify=False)
    app[LEDGER] = world.wechat.app[LEDGER]
    app[BILLS] = world.wechat.app[BILLS]
    app.middlewares.insert(0, record)
    server = TestServer(app, host="127.0.0.1", port=backup_port)
    await server.start_server()
    try:
        yield server, seen
    finally:
        await server.close()


@pytest.fixture
def breaker_clock() -> list[float]:
    return [0.0]


def _client(world: World, breaker_clock: list[float], *, base_url: str | None = None,
            backup_url: str | None = None) -> WechatPayClient:
    async def no_sleep(seconds: float) -> None:
        return None

    settings = dataclasses.replace(world.settings, wechat_base_url=base_url or world.settings.wechat_base_url,
                                   wechat_backup_url=backup_url if backup_url is not None else
                                   world.settings.wechat_backup_url)
    return WechatPayClient.from_settings(settings, now=lambda: world.clock.now().timestamp(), sleep=no_sleep,
                                         timeout=TIMEOUT, metrics=Metrics(),
                                         breaker=Breaker(30.0, clock=lambda: breaker_clock[0]))


def _order(world: World, out_trade_no: str) -> Order:
    return Order(out_trade_no=out_trade_no, description="Coffee beans", amount=1999, openid=OPENID,
                      time_expire=(world.clock.now() + dt.timedelta(hours=2)).astimezone(SHANGHAI),
                      notify_url=world.settings.notify_url or "")


def _domains(metrics: Metrics | None) -> dict[tuple[str, str], float]:
    assert metrics is not None
    text = metrics.render().decode()
    return {(s.labels["domain"], s.labels["outcome"]): s.value for family in text_string_to_metric_families(text)
            if family.name == "payflow_wechat_domain_requests" for s in family.samples if s.name.endswith("_total")}


async def test_payments_go_on_with_the_primary_killed(world: World, backup: tuple[TestServer, list[Seen]]) -> None:
    server, seen = backup
    client = world.payflow.app[app_keys.WECHAT]
    assert isinstance(client, WechatPayClient) and client.domains.backup == str(server.make_url("")).rstrip("/")
    client.domains.breaker = Breaker(30.0, clock=lambda: 0.0)
    first = await world.create("order-1")
    await world.wechat.close()  # the primary is killed
    second = await world.create("order-2")  # placed through the backup
    assert second["prepay_id"] == world.wechat_order(second["out_trade_no"]).prepay_id
    status, view = await world.api("GET", f"/v1/payments/{second['out_trade_no']}")  # queries on read ...
    assert status == 200 and view["state"] == "prepaid"
    assert [s.target.split("?")[0] for s in seen] == [  # ... on the backup alone: the breaker is open
        "/v3/pay/transactions/jsapi", f"/v3/pay/transactions/out-trade-no/{second['out_trade_no']}"]
    for payment in (first, second):
        async with world.http.post(server.make_url(f"/sim/v1/transactions/{payment['out_trade_no']}/pay"),
                                   json={}) as response:
            assert response.status == 200
    assert await server.app[NOTIFIER].deliver_due(world.wechat_clock.now()) == 2
    await world.service.drain()
    assert world.backend_order("order-1").status == "paid" and world.backend_order("order-2").status == "paid"
    assert _domains(world.payflow.app[app_keys.METRICS]) == {
        ("primary", "answered"): 1, ("primary", "unreachable"): 1, ("backup", "answered"): 2}


async def test_a_stopped_primary_costs_one_timeout_then_the_breaker_skips_it(
    world: World, backup: tuple[TestServer, list[Seen]], breaker_clock: list[float],
) -> None:
    server, seen = backup
    stopped = StoppedServer()
    client = _client(world, breaker_clock, base_url=await stopped.start(),
                     backup_url=str(server.make_url("")).rstrip("/"))
    try:
        order = _order(world, "PF0000000000000000000001")
        started = time.perf_counter()
        prepay_id = (await client.place(order)).prepay_id
        assert time.perf_counter() - started >= TIMEOUT  # it waited for the stopped primary, once
        assert prepay_id == world.wechat_order(order.out_trade_no).prepay_id
        # the very request the primary swallowed (it may have reached WeChat) went to the backup: WeChat's
        # re-entry by out_trade_no with identical parameters answers the same prepay_id
        assert stopped.seen() == seen
        assert len(seen) == 1 and seen[0].target == "/v3/pay/transactions/jsapi"
        assert (await client.place(order)).prepay_id == prepay_id
        for _ in range(3):
            txn = await client.query(order.out_trade_no)
            assert txn is not None and txn.trade_state == "NOTPAY"
        assert len(stopped.connections) == 1  # the breaker is open: the stopped primary is not asked again
        assert _domains(client.metrics) == {("primary", "unreachable"): 1, ("backup", "answered"): 5}
        breaker_clock[0] = 30.0  # the cooldown is over: one call probes the primary again
        assert await client.query(order.out_trade_no) is not None
        assert len(stopped.connections) == 2 and len(seen) == 6
    finally:
        await client.aclose()
        await stopped.close()


@pytest.mark.parametrize("extra_overrides", [{"wechat_timeout": 1.5}])
async def test_a_payer_deadline_spent_on_a_silent_primary_opens_the_breaker(
    world: World, backup: tuple[TestServer, list[Seen]],
) -> None:
    """A create's deadline (PAYFLOW_WECHAT_TIMEOUT, 1.5 s here) ends before the call's own timeout (2 s): the call
    is cancelled, not timed out, and still counts against the primary, so the next payer goes to the backup."""
    _, seen = backup
    client = world.payflow.app[app_keys.WECHAT]
    assert isinstance(client, WechatPayClient)
    world.wechat_faults(api_latency_min=3.0, api_latency_max=3.0)  # the primary accepts, then says nothing in time
    status, body = await world.api("POST", "/v1/payments", json={
        "order_id": "order-1", "amount": 1999, "description": "Coffee beans", "openid": OPENID})
    assert status == 503, body  # the payment is kept; the sweeper places it
    assert client.domains.breaker.is_open and seen == []
    second = await world.create("order-2")
    assert second["prepay_id"] == world.wechat_order(second["out_trade_no"]).prepay_id
    assert [s.target for s in seen] == ["/v3/pay/transactions/jsapi"]


async def test_a_5xx_on_the_primary_is_an_answer_not_a_failover(
    world: World, backup: tuple[TestServer, list[Seen]], breaker_clock: list[float],
) -> None:
    _, seen = backup
    client = _client(world, breaker_clock)
    try:
        world.wechat_faults(api_500=1.0)
        with pytest.raises(errors.WechatRetryable) as info:
            await client.query("PF0000000000000000000002")
        assert info.value.status == 500 and seen == [] and not client.domains.breaker.is_open
        assert _domains(client.metrics) == {("primary", "answered"): 1}
    finally:
        await client.aclose()


async def test_a_bill_download_is_asked_where_its_url_points(
    world: World, backup: tuple[TestServer, list[Seen]], breaker_clock: list[float],
) -> None:
    _, seen = backup
    client = _client(world, breaker_clock)
    try:
        await world.create("order-1")
        info = await client.trade_bill(world.clock.now().astimezone(SHANGHAI).date())  # the primary answers
        await world.wechat.close()
        with pytest.raises(errors.WechatRetryable, match="ClientConnectorError"):
            await client.download_bill(info)  # WeChat's absolute URL names the primary: not asked elsewhere
        assert seen == []
    finally:
        await client.aclose()


@pytest.mark.parametrize("world_overrides", [{}])
async def test_without_a_backup_a_killed_primary_is_one_retryable_failure(
    world: World, breaker_clock: list[float],
) -> None:
    client = _client(world, breaker_clock)
    assert client.domains.backup is None  # a simulator's base URL has no default backup
    try:
        await world.wechat.close()
        with pytest.raises(errors.WechatRetryable, match="ClientConnectorError"):
            await client.query("PF0000000000000000000003")
        assert _domains(client.metrics) == {("primary", "unreachable"): 1}
        assert not client.domains.breaker.is_open
    finally:
        await client.aclose()
