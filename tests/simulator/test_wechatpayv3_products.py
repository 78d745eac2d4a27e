"""The real `wechatpayv3` 2.0.4 SDK against the simulator for Native, H5 and App (and a mini program's JSAPI):
in public-key mode, and in platform-certificate mode, where it downloads, decrypts and verifies the simulator's
certificates itself (bootstrapped from a pre-seeded `cert_dir`, or through its own download; WECHATPAY_V3 §10.2)."""

from __future__ import annotations

import asyncio
import json
import pathlib
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from wechatpayv3 import WeChatPay, WeChatPayType
from wechatpayv3.core import Core

from payflow.clock import SystemClock
from payflow.devkeys import KeySet
from simulator.wechat import CERTIFICATES, NOTIFIER, create_app

MINI_PROGRAM = "wx5c4d8a9e1f2b3c4d"
MOBILE_APP = "wx9f8e7d6c5b4a3921"
H5_SCENE = {"payer_client_ip": "14.23.150.211", "h5_info": {"type": "Wap", "app_name": "payflow"}}
OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"


class Callbacks:
    """A notify_url handled the SDK's way: `callback()`, 204 if it verified, else 401."""

    def __init__(self) -> None:
        self.wxpay: WeChatPay | None = None
        self.results: list[dict[str, Any] | None] = []

    async def handle(self, request: web.Request) -> web.Response:
        assert self.wxpay is not None
        body = await request.read()
        # callback() may download certificates (blocking requests): off the loop, like the SDK calls.
        result = await asyncio.to_thread(self.wxpay.callback, dict(request.headers), body)
        self.results.append(result)
        return web.Response(status=204) if result is not None else web.json_response({"code": "FAIL"}, status=401)


class Setup:
    def __init__(self, simulator: web.Application, base: str, notify_url: str, callbacks: Callbacks,
                 keys: KeySet) -> None:
        self.simulator, self.base, self.notify_url, self.callbacks, self.keys = (
            simulator, base, notify_url, callbacks, keys)

    def sdk(self, wechatpay_type: WeChatPayType, *, appid: str | None = None, public_key: bool = True,
            cert_dir: pathlib.Path | None = None) -> WeChatPay:
        extra: dict[str, Any] = {}
        if public_key:
            extra = {"public_key": self.keys.pub_key_file.read_text(), "public_key_id": self.keys.pub_key_id}
        wxpay = WeChatPay(
            wechatpay_type=wechatpay_type, mchid=self.keys.mchid,
            private_key=self.keys.merchant_key_file.read_text(), cert_serial_no=self.keys.mch_serial,
            apiv3_key=self.keys.apiv3_key, appid=appid or self.keys.appid, notify_url=self.notify_url,
            cert_dir=None if cert_dir is None else str(cert_dir), timeout=(5, 10), **extra,
        )
        wxpay._core._gate_way = self.base
        self.callbacks.wxpay = wxpay
        return wxpay

    async def pay(self, out_trade_no: str) -> None:
        async with aiohttp.ClientSession() as session, \
                session.post(f"{self.base}/sim/v1/transactions/{out_trade_no}/pay") as paid:
            assert paid.status == 200

    async def control(self, path: str, body: dict[str, Any]) -> Any:
        async with aiohttp.ClientSession() as session, session.post(f"{self.base}{path}", json=body) as answer:
            assert answer.status in (200, 201), await answer.text()
            return await answer.json()


async def _setup(aiohttp_server: Any, keys: KeySet, **options: Any) -> Setup:
    simulator = create_app(keys, notify=False, appids={MINI_PROGRAM: "mini_program", MOBILE_APP: "app"}, **options)
    server = await aiohttp_server(simulator)
    callbacks = Callbacks()
    notify_app = web.Application()
    notify_app.router.add_post("/notify", callbacks.handle)
    notify_server = await aiohttp_server(notify_app)
    return Setup(simulator, str(server.make_url("")).rstrip("/"), str(notify_server.make_url("/notify")), callbacks,
                 keys)


async def _place_native_h5_app(setup: Setup, prefix: str, **sdk: Any) -> dict[str, Any]:
    answers = {}
    for kind, extra, appid in ((WeChatPayType.NATIVE, {}, None), (WeChatPayType.H5, {"scene_info": H5_SCENE}, None),
                               (WeChatPayType.APP, {}, MOBILE_APP)):
        wxpay = setup.sdk(kind, appid=appid, **sdk)
        no = f"{prefix}{kind.name}0001"
        code, message = await asyncio.to_thread(wxpay.pay, description="Image形象店-深圳腾大-QQ公仔", out_trade_no=no,
                                                amount={"total": 88}, **extra)
        assert code == 200, message
        answers[kind.name] = json.loads(message)
        await setup.pay(no)
        code, message = await asyncio.to_thread(wxpay.query, out_trade_no=no)
        assert code == 200
        answers[f"{kind.name}:query"] = json.loads(message)
    return answers


def _check_answers(answers: dict[str, Any], keys: KeySet) -> None:
    assert answers["NATIVE"]["code_url"].startswith("weixin://wxpay/bizpayurl?pr=")
    assert answers["H5"]["h5_url"].startswith("https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb?prepay_id=wx")
    assert answers["APP"]["prepay_id"].startswith("wx")
    queried = {kind: (answers[f"{kind}:query"]["trade_type"], answers[f"{kind}:query"]["appid"])
               for kind in ("NATIVE", "H5", "APP")}
    assert queried == {"NATIVE": ("NATIVE", keys.appid), "H5": ("MWEB", keys.appid), "APP": ("APP", MOBILE_APP)}


async def test_public_key_mode_places_native_h5_and_app_orders(aiohttp_server: Any, wechat_keys: KeySet) -> None:
    setup = await _setup(aiohttp_server, wechat_keys)
    _check_answers(await _place_native_h5_app(setup, "PK"), wechat_keys)


async def test_a_mini_program_pays_through_jsapi_with_its_own_appid(aiohttp_server: Any, wechat_keys: KeySet) -> None:
    setup = await _setup(aiohttp_server, wechat_keys)
    wxpay = setup.sdk(WeChatPayType.MINIPROG, appid=MINI_PROGRAM)
    code, message = await asyncio.to_thread(wxpay.pay, description="mini", out_trade_no="MP20261126000001",
                                            amount={"total": 3}, payer={"openid": OPENID})
    assert code == 200 and json.loads(message)["prepay_id"].startswith("wx")
    await setup.pay("MP20261126000001")
    code, message = await asyncio.to_thread(wxpay.query, out_trade_no="MP20261126000001")
    assert (json.loads(message)["trade_type"], json.loads(message)["appid"]) == ("JSAPI", MINI_PROGRAM)
    other = setup.sdk(WeChatPayType.MINIPROG, appid="wx0000000000000000")
    code, message = await asyncio.to_thread(other.pay, description="mini", out_trade_no="MP20261126000002",
                                            amount={"total": 3}, payer={"openid": OPENID})
    assert (code, json.loads(message)["code"]) == (400, "APPID_MCHID_NOT_MATCH")


async def test_certificate_mode_from_a_seeded_cert_dir_survives_a_rotation_by_downloading(
    aiohttp_server: Any, wechat_keys: KeySet, tmp_path: pathlib.Path
) -> None:
    setup = await _setup(aiohttp_server, wechat_keys, key_mode="certificates")
    [first] = setup.simulator[CERTIFICATES].all()
    # The SDK's constructor downloads from its hard-coded gateway unless cert_dir holds a valid certificate.
    (tmp_path / f"{first.serial}.pem").write_bytes(first.pem)
    _check_answers(await _place_native_h5_app(setup, "CD", public_key=False, cert_dir=tmp_path), wechat_keys)

    rotated = await setup.control("/sim/v1/certificates/rotate", {"overlap": 0})
    wxpay = setup.sdk(WeChatPayType.NATIVE, public_key=False, cert_dir=tmp_path)
    assert [f"{c.serial_number:040X}" for c in wxpay._core._certificates] == [first.serial]
    code, message = await asyncio.to_thread(wxpay.pay, description="after rotation", out_trade_no="CD20261126R001",
                                            amount={"total": 1})
    assert code == 200 and "code_url" in json.loads(message)
    # It met an unknown serial, downloaded /v3/certificates from the simulator, decrypted and kept both.
    assert (tmp_path / f"{rotated['serial_no']}.pem").read_text() == rotated["pem"]
    assert {f"{c.serial_number:040X}" for c in wxpay._core._certificates} == {first.serial, rotated["serial_no"]}


async def test_certificate_mode_bootstraps_by_its_own_download_and_verifies_callbacks(
    aiohttp_server: Any, wechat_keys: KeySet, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = await _setup(aiohttp_server, wechat_keys, key_mode="certificates")
    # Its constructor would download from api.mch.weixin.qq.com: hold that back, point it here, then let it run.
    with monkeypatch.context() as patched:
        patched.setattr(Core, "_init_certificates", lambda self: None)
        wxpay = setup.sdk(WeChatPayType.NATIVE, public_key=False, cert_dir=tmp_path / "certs")
    await asyncio.to_thread(wxpay._core._init_certificates)
    [cert] = setup.simulator[CERTIFICATES].all()
    assert [f"{c.serial_number:040X}" for c in wxpay._core._certificates] == [cert.serial]
    assert (tmp_path / "certs" / f"{cert.serial}.pem").read_bytes() == cert.pem

    _check_answers(await _place_native_h5_app(setup, "BS", public_key=False, cert_dir=tmp_path / "certs"),
                   wechat_keys)
    assert await setup.simulator[NOTIFIER].deliver_due(SystemClock().now()) == 3
    assert [r is not None and r["resource"]["trade_state"] for r in setup.callbacks.results] == ["SUCCESS"] * 3
    assert {r["resource"]["trade_type"] for r in setup.callbacks.results if r} == {"NATIVE", "MWEB", "APP"}


async def test_in_the_migration_period_the_public_key_sdk_verifies_certificate_signed_callbacks(
    aiohttp_server: Any, wechat_keys: KeySet
) -> None:
    setup = await _setup(aiohttp_server, wechat_keys, key_mode="both", pubkey_share=0.0)
    answers = await _place_native_h5_app(setup, "MG")  # answers: signed with the public key it names
    _check_answers(answers, wechat_keys)
    assert await setup.simulator[NOTIFIER].deliver_due(SystemClock().now()) == 3
    # Notifications came signed with the certificate: the SDK downloaded the list to verify them.
    assert all(r is not None for r in setup.callbacks.results) and len(setup.callbacks.results) == 3
    assert setup.callbacks.wxpay is not None
    # A set: three callbacks downloading at once may each append (the SDK's list is not thread-safe).
    downloaded = {f"{c.serial_number:040X}" for c in setup.callbacks.wxpay._core._certificates}
    assert downloaded == {setup.simulator[CERTIFICATES].all()[0].serial}
