from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import AsyncIterator, Iterator

import pytest

from payflow import devkeys
from payflow.clock import FakeClock
from payflow.service import PaymentService
from payflow.settings import Settings
from payflow.store import PaymentStore, open_store
from payflow.wechat.notify import NotificationVerifier
from tests import factories, postgres_server
from tests.fakes import FakeWechat

API_TOKEN = "test-api-token"
ADMIN_TOKEN = "test-admin-token"


@pytest.fixture
def settings(tmp_path: pathlib.Path, keyset: devkeys.KeySet) -> Settings:
    return dataclasses.replace(
        Settings(),
        wechat_mchid=keyset.mchid,
        wechat_appid=keyset.appid,
        wechat_mch_serial=keyset.mch_serial,
        wechat_mch_key_file=str(keyset.merchant_key_file),
        wechat_apiv3_key=keyset.apiv3_key,
        wechat_pubkey_id=keyset.pub_key_id,
        wechat_pubkey_file=str(keyset.pub_key_file),
        database_url=f"sqlite:///{tmp_path / 'payflow.db'}",
        notify_url="https://pay.example.com/v1/wechat/notify",
        api_token=API_TOKEN,
        admin_token=ADMIN_TOKEN,
        max_body_bytes=4096,
        jitter=0.0,  # schedules are exact in tests
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
def verifier(keyset: devkeys.KeySet, clock: FakeClock) -> NotificationVerifier:
    return NotificationVerifier({keyset.pub_key_id: keyset.platform_public_key}, keyset.apiv3_key,
                                now=lambda: clock.now().timestamp())


@pytest.fixture
def service(sqlite_store: PaymentStore, settings: Settings, wechat: FakeWechat, clock: FakeClock,
            verifier: NotificationVerifier) -> PaymentService:
    return PaymentService(sqlite_store, settings, wechat=wechat, verifier=verifier, clock=clock)


@pytest.fixture(scope="session")
def keyset(tmp_path_factory: pytest.TempPathFactory) -> devkeys.KeySet:
    """One development key set for the whole run: RSA key generation is slow."""
    return devkeys.write_keyset(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def other_keyset(tmp_path_factory: pytest.TempPathFactory) -> devkeys.KeySet:
    """A second, unrelated key set: signatures made with it must not verify."""
    return devkeys.write_keyset(tmp_path_factory.mktemp("other-keys"))


@pytest.fixture(scope="session")
def postgres() -> Iterator[postgres_server.Server]:
    """The run's one PostgreSQL server, started on first use: PAYFLOW_TEST_POSTGRES (a URL, or `embedded`), else
    the machine's on 127.0.0.1:5432, else an embedded one (tests/postgres_server.py). Tests make their own schemas."""
    with postgres_server.provide(os.environ.get("PAYFLOW_TEST_POSTGRES")) as server:
        yield server
