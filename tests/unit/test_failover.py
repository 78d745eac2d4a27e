"""The backup-domain breaker and the order in which a call tries the domains (payflow/wechat/failover.py)."""

from __future__ import annotations

import asyncio
import dataclasses

import aiohttp
import pytest

from payflow import errors
from payflow.devkeys import KeySet
from payflow.settings import Settings
from payflow.wechat.client import WechatPayClient
from payflow.wechat.failover import Breaker, Domains

PRIMARY = "https://api.mch.weixin.qq.com"
BACKUP = "https://api2.mch.weixin.qq.com"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Wechat:
    """`send` for `Domains.call`: each domain either answers its own name or cannot be reached."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.asked: list[str] = []

    async def send(self, domain: str) -> str:
        self.asked.append(domain)
        if domain in self.down:
            raise aiohttp.ClientConnectorError(None, OSError(111, "Connection refused"))  # type: ignore[arg-type]
        return domain


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def domains(clock: Clock) -> Domains:
    return Domains(PRIMARY, BACKUP, Breaker(30.0, clock=clock))


async def test_a_dead_primary_costs_one_attempt_per_cooldown(domains: Domains, clock: Clock) -> None:
    wechat = Wechat()
    assert await domains.call(wechat.send, endpoint="query") == PRIMARY
    wechat.down.add(PRIMARY)
    assert await domains.call(wechat.send, endpoint="query") == BACKUP
    assert wechat.asked == [PRIMARY, PRIMARY, BACKUP] and domains.breaker.is_open
    wechat.asked.clear()
    for _ in range(5):  # the breaker is open: straight to the backup
        assert await domains.call(wechat.send, endpoint="query") == BACKUP
    assert wechat.asked == [BACKUP] * 5
    clock.now = 29.9
    assert domains.order() == (BACKUP, PRIMARY)


async def test_after_the_cooldown_one_call_probes_the_primary(domains: Domains, clock: Clock) -> None:
    wechat = Wechat()
    wechat.down.add(PRIMARY)
    await domains.call(wechat.send, endpoint="query")
    clock.now = 30.0
    assert domains.order() == (PRIMARY, BACKUP)  # this call is the probe ...
    assert domains.order() == (BACKUP, PRIMARY)  # ... the others keep to the backup meanwhile
    clock.now = 60.0
    wechat.asked.clear()
    assert await domains.call(wechat.send, endpoint="query") == BACKUP  # the probe failed: open again
    assert wechat.asked == [PRIMARY, BACKUP]
    assert domains.order() == (BACKUP, PRIMARY)
    wechat.down.clear()  # the primary is back
    clock.now = 90.0
    assert await domains.call(wechat.send, endpoint="query") == PRIMARY
    assert not domains.breaker.is_open and domains.order() == (PRIMARY, BACKUP)


async def test_with_both_unreachable_the_last_error_is_raised_and_the_primary_still_tried(
    domains: Domains,
) -> None:
    wechat = Wechat()
    wechat.down.update({PRIMARY, BACKUP})
    with pytest.raises(aiohttp.ClientConnectorError):
        await domains.call(wechat.send, endpoint="query")
    assert wechat.asked == [PRIMARY, BACKUP]
    wechat.asked.clear()
    wechat.down.discard(PRIMARY)  # the breaker is open, but the primary is asked after the backup
    assert await domains.call(wechat.send, endpoint="query") == PRIMARY
    assert wechat.asked == [BACKUP, PRIMARY] and not domains.breaker.is_open


async def test_an_answer_of_any_kind_is_no_failover(domains: Domains) -> None:
    asked: list[str] = []

    async def broken(domain: str) -> str:
        asked.append(domain)
        raise aiohttp.ClientPayloadError("truncated body")  # WeChat answered; the answer was bad

    with pytest.raises(aiohttp.ClientPayloadError):
        await domains.call(broken, endpoint="query")
    assert asked == [PRIMARY] and not domains.breaker.is_open


async def test_a_timeout_fails_over(domains: Domains) -> None:
    async def slow_primary(domain: str) -> str:
        if domain == PRIMARY:
            raise TimeoutError
        return domain

    assert await domains.call(slow_primary, endpoint="jsapi") == BACKUP
    assert domains.breaker.is_open


async def test_without_a_backup_nothing_changes(clock: Clock) -> None:
    domains = Domains(PRIMARY, None, Breaker(clock=clock))
    wechat = Wechat()
    wechat.down.add(PRIMARY)
    with pytest.raises(aiohttp.ClientConnectorError):
        await domains.call(wechat.send, endpoint="query")
    assert wechat.asked == [PRIMARY] and not domains.breaker.is_open
    assert domains.order() == (PRIMARY,)


async def test_an_explicit_order_is_asked_as_given(domains: Domains) -> None:
    wechat = Wechat()
    download = "https://download.example.com"
    wechat.down.add(download)
    with pytest.raises(aiohttp.ClientConnectorError):
        await domains.call(wechat.send, endpoint="billdownload", order=(download,))
    assert wechat.asked == [download] and not domains.breaker.is_open


def test_labels_never_name_a_host(domains: Domains) -> None:
    assert [domains.label(d) for d in (PRIMARY, BACKUP, "http://elsewhere")] == ["primary", "backup", "other"]
    assert Domains(PRIMARY + "/", BACKUP + "/").label(PRIMARY) == "primary"


@pytest.mark.parametrize(
    ("environ", "backup"),
    [
        ({}, BACKUP),  # WeChat's own base URL: its documented second domain
        ({"PAYFLOW_WECHAT_BASE_URL": PRIMARY + "/"}, BACKUP),
        ({"PAYFLOW_WECHAT_BASE_URL": "http://127.0.0.1:8081"}, None),  # a simulator has none
        ({"PAYFLOW_WECHAT_BASE_URL": "http://127.0.0.1:8081", "PAYFLOW_WECHAT_BACKUP_URL": "http://127.0.0.1:8083/"},
         "http://127.0.0.1:8083"),
        ({"PAYFLOW_WECHAT_BACKUP_URL": ""}, None),  # set empty: no failover, even in front of WeChat
        ({"PAYFLOW_WECHAT_BACKUP_URL": "  "}, None),
    ],
)
def test_the_backup_url_setting(environ: dict[str, str], backup: str | None) -> None:
    assert Settings.from_env(environ).wechat_backup() == backup


def test_a_backup_url_that_is_no_url_is_named() -> None:
    with pytest.raises(errors.SettingsError, match="^PAYFLOW_WECHAT_BACKUP_URL: 'api2.mch.weixin.qq.com' is not"):
        Settings.from_env({"PAYFLOW_WECHAT_BACKUP_URL": "api2.mch.weixin.qq.com"})


def test_the_client_from_settings_fails_over_to_the_backup(keyset: KeySet, settings: Settings) -> None:
    client = WechatPayClient.from_settings(dataclasses.replace(settings, wechat_base_url=PRIMARY))
    assert (client.domains.primary, client.domains.backup) == (PRIMARY, BACKUP)


async def test_a_call_given_up_on_while_the_primary_is_silent_opens_the_breaker(
    domains: Domains, clock: Clock,
) -> None:
    async def silent(seconds: float) -> str:
        clock.now += seconds  # the caller waited this long, then its deadline cancelled the call
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await domains.call(lambda domain: silent(0.5), endpoint="jsapi")
    assert not domains.breaker.is_open  # cancelled at once (a shutdown, say): no verdict on the primary
    with pytest.raises(asyncio.CancelledError):
        await domains.call(lambda domain: silent(1.0), endpoint="jsapi")
    assert domains.breaker.is_open and domains.order() == (BACKUP, PRIMARY)
