from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from payflow.app import create_app
from payflow.clock import FakeClock
from payflow.settings import Settings
from payflow.store import PaymentStore
from payflow.wechat.notify import NotificationVerifier
from tests.fakes import FakeWechat


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings, sqlite_store: PaymentStore, wechat: FakeWechat,
                 clock: FakeClock, verifier: NotificationVerifier) -> TestClient:
    return await aiohttp_client(create_app(settings, store=sqlite_store, wechat=wechat, verifier=verifier,
                                           clock=clock, run_sweeper=False))
