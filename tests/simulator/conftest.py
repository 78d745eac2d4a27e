"""Fixtures of the WeChat simulator tests: one key set per session (RSA keygen is slow), a FakeClock,
a merchant that signs like an SDK and verifies every answer, and a programmable notify_url."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDictProxy

from payflow import devkeys
from payflow.clock import FakeClock
from payflow.devkeys import KeySet
from payflow.wechat import crypto
from simulator.wechat import create_app

T0 = dt.datetime(2026, 11, 26, 4, 0, tzinfo=dt.UTC)  # 12:00 in Shanghai
NOTIFY_URL = "https://pay.example.com/v1/wechat/notify"


@dataclasses.dataclass
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Merchant:
    """Signs APIv3 requests as a merchant SDK does, and checks every simulator answer's signature."""

    def __init__(self, client: TestClient, keys: KeySet, clock: FakeClock) -> None:
        self.client = client
        self.keys = keys
        self.clock = clock

    @property
    def app(self) -> web.Application:
        return self.client.app  # type: ignore[return-value]

    async def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | bytes | None = None,
        *,
        headers: Mapping[str, str | None] | None = None,
        timestamp: int | None = None,
        verify: bool = True,
    ) -> Answer:
        raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
        ts = int(self.clock.now().timestamp()) if timestamp is None else timestamp
        keys = self.keys
        auth = crypto.authorization_header(keys.mchid, keys.mch_serial, keys.merchant_private_key,
                                           method, path, raw, timestamp=ts)
        sent = {"Authorization": auth, "Accept": "application/json", "User-Agent": "payflow-tests/1",
                "Content-Type": "application/json", "Wechatpay-Serial": keys.pub_key_id}
        skipped = []
        for name, value in (headers or {}).items():
            sent.pop(name, None)
            if value is None:
                skipped.append(name)  # else aiohttp would add its own default
            else:
                sent[name] = value
        request = self.client.request(method, path, data=raw, headers=sent, skip_auto_headers=skipped)
        async with request as response:
            answer = Answer(response.status, response.headers, await response.read())
        if verify:
            self.verify(answer)
        return answer

    def verify(self, answer: Answer) -> None:
        platform = {self.keys.pub_key_id: self.keys.platform_public_key}
        crypto.verify_signed_message(answer.headers, answer.body, platform, now=self.clock.now().timestamp())

    def order(self, out_trade_no: str, **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "appid": self.keys.appid,
            "mchid": self.keys.mchid,
            "description": "Image形象店-深圳腾大-QQ公仔",
            "out_trade_no": out_trade_no,
            "notify_url": NOTIFY_URL,
            "amount": {"total": 100, "currency": "CNY"},
            "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
        }
        body.update(overrides)
        return {k: v for k, v in body.items() if v is not ...}

    async def place(self, out_trade_no: str, **overrides: Any) -> Answer:
        return await self.request("POST", "/v3/pay/transactions/jsapi", self.order(out_trade_no, **overrides))

    async def query(self, out_trade_no: str) -> Answer:
        path = f"/v3/pay/transactions/out-trade-no/{out_trade_no}?mchid={self.keys.mchid}"
        return await self.request("GET", path)

    async def close(self, out_trade_no: str) -> Answer:
        path = f"/v3/pay/transactions/out-trade-no/{out_trade_no}/close"
        return await self.request("POST", path, {"mchid": self.keys.mchid})

    async def control(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.client.request(method, path, json=body) as response:
            return response.status, await response.json()

    async def pay(self, out_trade_no: str, **body: Any) -> tuple[int, Any]:
        return await self.control("POST", f"/sim/v1/transactions/{out_trade_no}/pay", body or None)


MakeWechat = Callable[..., Awaitable[Merchant]]


@pytest.fixture(scope="session")
def wechat_keys(tmp_path_factory: pytest.TempPathFactory) -> KeySet:
    return devkeys.write_keyset(tmp_path_factory.mktemp("wechat-keys"))


@pytest.fixture
def wechat_clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def make_wechat(aiohttp_client: Any, wechat_keys: KeySet, wechat_clock: FakeClock) -> MakeWechat:
    async def make(**options: Any) -> Merchant:
        options.setdefault("clock", wechat_clock)
        options.setdefault("notify", False)
        client = await aiohttp_client(create_app(wechat_keys, **options))
        return Merchant(client, wechat_keys, options["clock"])

    return make


@pytest.fixture
async def wechat(make_wechat: MakeWechat) -> Merchant:
    return await make_wechat()


@dataclasses.dataclass
class Post:
    headers: dict[str, str]
    body: bytes

    @property
    def probe(self) -> bool:
        return self.headers["Wechatpay-Signature"].startswith(crypto.PROBE_PREFIX)


class Receiver:
    """A merchant notify_url: records every POST and answers the next scripted status (else `default`).

    With `verify_now` set it checks signatures like a correct merchant and answers 401 when they fail.
    """

    def __init__(self, keys: KeySet) -> None:
        self.keys = keys
        self.posts: list[Post] = []
        self.statuses: list[int] = []
        self.default = 204
        self.verify_now: Callable[[], float] | None = None
        self.hold: asyncio.Event | None = None
        self.arrived = asyncio.Event()
        self.server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/notify"))

    def real_posts(self) -> list[Post]:
        return [post for post in self.posts if not post.probe]

    async def handle(self, request: web.Request) -> web.Response:
        post = Post(dict(request.headers), await request.read())
        self.posts.append(post)
        self.arrived.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.verify_now is not None:
            try:
                crypto.verify_signed_message(post.headers, post.body,
                                             {self.keys.pub_key_id: self.keys.platform_public_key},
                                             now=self.verify_now())
            except crypto.CryptoError:
                return web.json_response({"code": "FAIL", "message": "签名错误"}, status=401)
        return web.Response(status=self.statuses.pop(0) if self.statuses else self.default)


@pytest.fixture
async def receiver(aiohttp_server: Any, wechat_keys: KeySet) -> AsyncIterator[Receiver]:
    receiver = Receiver(wechat_keys)
    app = web.Application()
    app.router.add_post("/notify", receiver.handle)
    receiver.server = await aiohttp_server(app)
    yield receiver
    if receiver.hold is not None:
        receiver.hold.set()  # let held handlers finish, so the server closes at once


@pytest.fixture
def keys_dir(wechat_keys: KeySet) -> pathlib.Path:
    return wechat_keys.directory
