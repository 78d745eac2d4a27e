"""The console under test: payflow's app with a scripted WeChat and backend (HTTP tests), or the e2e world of
both simulators (browser tests); `Console` signs in and posts forms as a browser would."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from payflow.app import create_app
from payflow.backend import Delivery
from payflow.clock import FakeClock
from payflow.http import keys
from payflow.models import Payment
from payflow.service import PaymentService
from payflow.settings import Settings
from payflow.store import PaymentStore
from payflow.wechat.api import Transaction
from payflow.wechat.notify import NotificationVerifier
from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import world, world_overrides  # noqa: F401 — the browser tests' fixtures
from tests.fakes import FakeWechat

CSRF = re.compile(r'name="csrf" value="([^"]*)"')


@dataclasses.dataclass
class ScriptedWechat(FakeWechat):
    """Answers queries: SUCCESS for what the payer paid (`paid`), NOTPAY otherwise."""

    paid: set[str] = dataclasses.field(default_factory=set)

    async def query(self, out_trade_no: str, appid: str | None = None) -> Transaction | None:
        if out_trade_no not in self.paid:
            return Transaction(out_trade_no=out_trade_no, trade_state="NOTPAY")
        return Transaction(out_trade_no=out_trade_no, trade_state="SUCCESS", transaction_id=f"4200{out_trade_no}",
                           amount=1999, payer_total=1999)


@dataclasses.dataclass
class ScriptedBackend:
    """The business backend: answers every delivery with `answer` and counts them."""

    answer: Delivery = Delivery("acked", 200, '{"ok": true}')
    delivered: list[str] = dataclasses.field(default_factory=list)

    async def deliver(self, payment: Payment) -> Delivery:
        self.delivered.append(payment.out_trade_no)
        return self.answer

    async def send(self, event_id: str, body: bytes) -> Delivery:
        self.delivered.append(event_id)
        return self.answer


@dataclasses.dataclass
class Console:
    client: TestClient[web.Request, web.Application]
    wechat: ScriptedWechat
    backend: ScriptedBackend
    clock: FakeClock

    @property
    def service(self) -> PaymentService:
        app = self.client.app
        assert app is not None
        return app[keys.SERVICE]

    async def sign_in(self, token: str = ADMIN_TOKEN) -> int:
        page = await self.client.get("/console/sign-in")
        response = await self.client.post("/console/sign-in", allow_redirects=False,
                                          data={"csrf": csrf_of(await page.text()), "token": token, "next": ""})
        return response.status

    async def csrf(self) -> str:
        page = await self.client.get("/console/")
        assert page.status == 200, await page.text()
        return csrf_of(await page.text())

    async def post(self, path: str, **fields: str) -> Any:
        """A form of the console, with this session's CSRF token unless the test gives its own."""
        data = {"csrf": await self.csrf(), **fields}
        return await self.client.post(path, data=data, allow_redirects=False)

    async def create(self, order_id: str, **extra: Any) -> str:
        """A payment through the API (so its fields pass the API's checks), placed at the scripted WeChat."""
        body = {"order_id": order_id, "amount": 1999, "description": "Coffee beans",
                "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", **extra}
        response = await self.client.post("/v1/payments", json=body,
                                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert response.status == 201, await response.text()
        return str((await response.json())["out_trade_no"])

    async def events(self, out_trade_no: str) -> list[tuple[str, str]]:
        return [(e.trigger, e.source) for e in await self.service.timeline(out_trade_no)]


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found is not None, "the page has no form with a CSRF token"
    return found.group(1)


@pytest.fixture
def console_settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """The settings the console app is made with; a test changes fields with
    `@pytest.mark.parametrize("console_settings", [{"field": value}], indirect=True)`."""
    return dataclasses.replace(settings, **getattr(request, "param", {}))


@pytest.fixture
async def console(aiohttp_client: Any, console_settings: Settings, sqlite_store: PaymentStore, clock: FakeClock,
                  verifier: NotificationVerifier) -> Console:
    wechat, backend = ScriptedWechat(), ScriptedBackend()
    app = create_app(console_settings, store=sqlite_store, wechat=wechat, backend=backend, verifier=verifier,
                     clock=clock, run_sweeper=False)
    return Console(await aiohttp_client(app), wechat, backend, clock)
