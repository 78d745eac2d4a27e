from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import AsyncIterator

import pytest

from payflow.clock import FakeClock
from payflow.service import PaymentService
from payflow.settings import Settings
from payflow.store import PaymentStore, open_store
from tests import factories
from tests.fakes import FakeWechat

API_TOKEN = "test-api-token"
ADMIN_TOKEN = "test-admin-token"


@pytest.fixture
def settings(tmp_path: pathlib.Path) -> Settings:
    return dataclasses.replace(
        Settings(),
        database_url=f"sqlite:///{tmp_path / 'payflow.db'}",
        notify_url="https://pay.example.com/v1/wechat/notify",
        api_token=API_TOKEN,
        admin_token=ADMIN_TOKEN,
        max_body_bytes=4096,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(factories.T0)


@pytest.fixture
def wechat() -> FakeWechat:
    return FakeWechat()


@pytest.fixture
async def sqlite_store(settings: Settings) -> AsyncIterator[PaymentStore]:
    store = await open_store(settings.database_url)
    yield store
    await store.close()


@pytest.fixture
def service(sqlite_store: PaymentStore, settings: Settings, wechat: FakeWechat, clock: FakeClock) -> PaymentService:
    return PaymentService(sqlite_store, settings, wechat=wechat, clock=clock)
