"""payflow with both simulators in-process on loopback, one fake clock for all three parties.

Tests drive time and work explicitly: `world.advance()`, `world.notify()` (WeChat's notifier delivers
what is due), `world.sweep()` (one sweeper pass, then the background forwards it started).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer, unused_port

from payflow.app import create_app
from payflow.backend import BackendClient
from payflow.clock import FakeClock
from payflow.devkeys import BACKEND_SIM_PATH, KeySet
from payflow.http import keys as app_keys
from payflow.metrics import Metrics
from payflow.service import PaymentService
from payflow.settings import Settings
from payflow.sweeper import PassReport, Sweeper
from payflow.wechat.client import WechatPayClient
from payflow.wechat.notify import NotificationVerifier
from simulator import backend as backend_sim
from simulator.backend.faults import BackendFaults
from simulator.wechat.app import create_app as create_wechat_sim
from simulator.wechat.appkeys import FAULTS, LEDGER, NOTIFIER
from simulator.wechat.faults import WechatFaults

OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"


async def _no_sleep(seconds: float) -> None:
    return None


@dataclasses.dataclass
class SkewedClock:
    """WeChat's clock: the world's clock plus `offset` seconds (clock skew between the parties)."""

    base: FakeClock
    offset: float = 0.0

    def now(self) -> dt.datetime:
        return self.base.now() + dt.timedelta(seconds=self.offset)


@dataclasses.dataclass
class World:
    clock: FakeClock
    keys: KeySet
    settings: Settings
    payflow: TestServer
    wechat: TestServer
    backend: TestServer
    http: aiohttp.ClientSession
    wechat_clock: SkewedClock
    clock_start: dt.datetime

    @property
    def service(self) -> PaymentService:
        return self.payflow.app[app_keys.SERVICE]

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def wechat_faults(self, **plan: float) -> None:
        self.wechat.app[FAULTS].plan = WechatFaults(**plan)

    def backend_faults(self, **plan: Any) -> None:
        self.backend.app[backend_sim.FAULTS].plan = BackendFaults(**plan)

    async def api(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.settings.admin_token}"}
        async with self.http.request(method, self.payflow.make_url(path), headers=headers, **kwargs) as response:
            return response.status, await response.json()

    async def create(self, order_id: str, amount: int = 1999, **extra: Any) -> dict[str, Any]:
        """`POST /v1/payments`; a field given as None is left out (`openid=None` for products without one)."""
        fields = {"order_id": order_id, "amount": amount, "description": "Coffee beans", "openid": OPENID, **extra}
        status, body = await self.api("POST", "/v1/payments", json={k: v for k, v in fields.items() if v is not None})
        assert status == 201, body
        return body  # type: ignore[no-any-return]

    async def pay(self, out_trade_no: str, amount: int | None = None) -> None:
        """The payer pays at WeChat (the simulator queues the notification)."""
        async with self.http.post(self.wechat.make_url(f"/sim/v1/transactions/{out_trade_no}/pay"),
                                  json={} if amount is None else {"amount": amount}) as response:
            assert response.status == 200, await response.text()

    async def notify(self) -> int:
        """WeChat's notifier delivers whatever is due now; then payflow's forwards finish."""
        made = await self.wechat.app[NOTIFIER].deliver_due(self.wechat_clock.now())
        await self.service.drain()
        return made

    async def sweep(self) -> PassReport:
        report = await Sweeper(self.service).run_once()
        await self.service.drain()
        return report

    async def payment(self, out_trade_no: str) -> Any:
        return await self.service.store.get(out_trade_no)

    async def events(self, out_trade_no: str) -> list[Any]:
        return await self.service.store.events(out_trade_no)

    def wechat_order(self, out_trade_no: str) -> Any:
        return self.wechat.app[LEDGER].get(out_trade_no, self.wechat_clock.now())

    def backend_order(self, order_id: str) -> Any:
        return self.backend.app[backend_sim.LEDGER].orders.get(order_id)

    async def register_at_backend(self, order_id: str, amount: int = 1999) -> None:
        self.backend.app[backend_sim.LEDGER].register(order_id, amount)

    def cancel_at_backend(self, order_id: str) -> None:
        self.backend.app[backend_sim.LEDGER].cancel(order_id)


@pytest.fixture
def world_overrides() -> dict[str, Any]:
    """Settings fields a test changes (parametrize it: `@pytest.mark.parametrize("world_overrides", [...])`)."""
    return {}


@pytest.fixture
async def world(tmp_path: Any, keyset: KeySet, world_overrides: dict[str, Any]) -> AsyncIterator[World]:
    start = dt.datetime(2026, 11, 26, 4, 0, tzinfo=dt.UTC)
    clock = FakeClock(start)
    now = lambda: clock.now().timestamp()  # noqa: E731
    wechat_clock = SkewedClock(clock)
    wechat = TestServer(create_wechat_sim(keyset, clock=wechat_clock, notify=False), host="127.0.0.1")
    backend = TestServer(backend_sim.create_app(keyset.backend_secret, clock=clock, sleep=_no_sleep),
                         host="127.0.0.1")
    await wechat.start_server()
    await backend.start_server()
    port = unused_port()
    settings = dataclasses.replace(
        Settings(),
        database_url=f"sqlite:///{tmp_path / 'payflow.db'}",
        wechat_base_url=str(wechat.make_url("")).rstrip("/"),
        wechat_mchid=keyset.mchid, wechat_appid=keyset.appid, wechat_mch_serial=keyset.mch_serial,
        wechat_mch_key_file=str(keyset.merchant_key_file), wechat_apiv3_key=keyset.apiv3_key,
        wechat_pubkey_id=keyset.pub_key_id, wechat_pubkey_file=str(keyset.pub_key_file),
        notify_url=f"http://127.0.0.1:{port}/v1/wechat/notify",
        backend_url=str(backend.make_url(BACKEND_SIM_PATH)), backend_secrets=(keyset.backend_secret,),
        api_token="api", admin_token="admin", jitter=0.0, backend_timeout=2.0,
    )
    settings = dataclasses.replace(settings, **world_overrides)
    metrics = Metrics()
    client = WechatPayClient.from_settings(settings, now=now, sleep=_no_sleep, timeout=2.0, metrics=metrics)
    forwarder = BackendClient(settings.backend_url or "", keyset.backend_secret, timeout=2.0, now=now)
    verifier = NotificationVerifier({keyset.pub_key_id: keyset.platform_public_key}, keyset.apiv3_key, now=now)
    app = create_app(settings, wechat=client, backend=forwarder, verifier=verifier, clock=clock, metrics=metrics,
                     run_sweeper=False)
    payflow = TestServer(app, host="127.0.0.1", port=port)
    await payflow.start_server()
    http = aiohttp.ClientSession()
    try:
        yield World(clock, keyset, settings, payflow, wechat, backend, http, wechat_clock, start)
    finally:
        await http.close()
        await payflow.close()
        await client.aclose()
        await forwarder.aclose()
        await backend.close()
        await wechat.close()
