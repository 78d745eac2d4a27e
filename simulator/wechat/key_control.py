"""Control endpoints under `/sim/v1` for what the simulated WeChat Pay signs with and which appids are bound to
the merchant: the key mode and its switch, the platform certificates and their rotation, the appids.
Unauthenticated: test tooling only. Errors as in control.py."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web

from payflow import logs
from simulator.wechat.appkeys import APPIDS, CLOCK, SIGNER
from simulator.wechat.certificates import DEFAULT_OVERLAP
from simulator.wechat.control import ControlError, _body
from simulator.wechat.products import DEFAULT_KIND
from simulator.wechat.signing import KeyMode

log = logs.get_logger(__name__)


async def get_signing(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIGNER].to_json(request.app[CLOCK].now()))


async def switch_signing(request: web.Request) -> web.Response:
    """`{"mode": "pubkey" | "certificates" | "both", "pubkey_share": 0.5}`: sign by that mode from now on."""
    body = await _body(request)
    signer, now = request.app[SIGNER], request.app[CLOCK].now()
    try:
        mode = KeyMode(body.get("mode"))
    except ValueError:
        modes = ", ".join(m.value for m in KeyMode)
        raise ControlError(400, "INVALID_INPUT", f"mode: expected one of {modes}, got {body.get('mode')!r}") from None
    share = body.get("pubkey_share")
    if share is not None and (isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1):
        raise ControlError(400, "INVALID_INPUT", f"pubkey_share: expected a number from 0 to 1, got {share!r}")
    signer.switch(mode, now, pubkey_share=share)
    log.info("signing.switched", mode=str(mode), pubkey_share=signer.pubkey_share)
    return web.json_response(signer.to_json(now))


async def list_certificates(request: web.Request) -> web.Response:
    signer, now = request.app[SIGNER], request.app[CLOCK].now()
    return web.json_response({"certificates": signer.certificates.to_json(now)})


async def rotate(request: web.Request) -> web.Response:
    """`{"overlap": seconds, "validity": seconds}` (both optional): issue the successor certificate, listed at
    once and signing after `overlap` (default a day) on the simulator's clock."""
    body = await _body(request)
    signer, now = request.app[SIGNER], request.app[CLOCK].now()
    overlap = _seconds(body, "overlap", DEFAULT_OVERLAP, allow_zero=True)
    validity = _seconds(body, "validity", signer.certificates.validity, allow_zero=False)
    cert = signer.certificates.rotate(now, overlap=overlap, validity=validity)
    log.info("certificates.rotated", serial=cert.serial, signing_from=cert.activates_at.isoformat())
    view = next(c for c in signer.certificates.to_json(now) if c["serial_no"] == cert.serial)
    return web.json_response(view, status=201)


async def list_appids(request: web.Request) -> web.Response:
    return web.json_response({"appids": request.app[APPIDS].to_json()})


async def bind_appid(request: web.Request) -> web.Response:
    """`PUT /sim/v1/appids/{appid}` `{"kind": "official_account" | "mini_program" | "app"}`."""
    body = await _body(request)
    try:
        request.app[APPIDS].bind(request.match_info["appid"], body.get("kind", DEFAULT_KIND))
    except ValueError as exc:
        raise ControlError(400, "INVALID_INPUT", str(exc)) from None
    log.info("appid.bound", appid=request.match_info["appid"])
    return web.json_response({"appids": request.app[APPIDS].to_json()})


async def unbind_appid(request: web.Request) -> web.Response:
    appid = request.match_info["appid"]
    if not request.app[APPIDS].unbind(appid):
        raise ControlError(404, "APPID_NOT_BOUND", f"appid {appid} is not bound to this merchant")
    log.info("appid.unbound", appid=appid)
    return web.json_response({"appids": request.app[APPIDS].to_json()})


def _seconds(body: dict[str, Any], name: str, default: dt.timedelta, *, allow_zero: bool) -> dt.timedelta:
    value = body.get(name)
    if value is None:
        return default
    number = not isinstance(value, bool) and isinstance(value, int | float)
    if not number or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ControlError(400, "INVALID_INPUT", f"{name}: expected seconds {bound}, got {value!r}")
    return dt.timedelta(seconds=value)


def setup(app: web.Application) -> None:
    app.router.add_get("/sim/v1/signing", get_signing)
    app.router.add_post("/sim/v1/signing", switch_signing)
    app.router.add_get("/sim/v1/certificates", list_certificates)
    app.router.add_post("/sim/v1/certificates/rotate", rotate)
    app.router.add_get("/sim/v1/appids", list_appids)
    app.router.add_put("/sim/v1/appids/{appid}", bind_appid)
    app.router.add_delete("/sim/v1/appids/{appid}", unbind_appid)
