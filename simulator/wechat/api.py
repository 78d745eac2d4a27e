"""The simulated WeChat Pay APIv3 endpoints (place order for JSAPI, Native, H5 and App; query, close, bills,
platform certificates), and the middleware that checks headers, authenticates, injects the fault plan's API
errors and picks the key every answer is signed with."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from payflow import logs
from payflow.clock import SHANGHAI
from payflow.wechat import crypto
from simulator.wechat import bills, faults, products, protocol, validation
from simulator.wechat.appkeys import (
    APPIDS,
    BILLS,
    CLOCK,
    FAULTS,
    KEYS,
    LEDGER,
    MERCHANT_CERTIFICATES,
    REFUNDS,
    SIGNER,
    SIGNING_KEY,
)
from simulator.wechat.ledger import LedgerError, Order
from simulator.wechat.protocol import ApiError
from simulator.wechat.signing import KeyMode

log = logs.get_logger(__name__)

_LEDGER_ERRORS = {
    "ORDER_NOT_EXIST": (404, "ORDER_NOT_EXIST", "订单不存在"),
    "ORDER_PAID": (400, "ORDERPAID", "该订单已支付"),
    "ORDER_CLOSED": (400, "ORDER_CLOSED", "订单已关闭"),
    "ORDER_EXPIRED": (400, "ORDER_CLOSED", "订单已关闭"),
    "PARAMS_MISMATCH": (400, "INVALID_REQUEST", "请求重入时，参数与首次请求时不一致"),
    "USER_PAYING": (202, "USER_PAYING", "用户支付中，需要输入密码"),
}


@web.middleware
async def api_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    if not request.path.startswith("/v3/"):
        return await handler(request)
    keys, clock, signer = request.app[KEYS], request.app[CLOCK], request.app[SIGNER]
    # Chosen before anything can fail, so error answers are signed with the same key (§2.3: by the serial the
    # request names, in the migration period).
    key = request[SIGNING_KEY] = signer.for_response(request.headers.get("Wechatpay-Serial"), clock.now())
    try:
        protocol.check_headers(request, keys, known_serial=lambda serial: signer.knows(serial, clock.now()))
        protocol.authenticate(request, await request.read(), keys, clock.now(),
                              certificates=request.app[MERCHANT_CERTIFICATES])
        dice = request.app[FAULTS]
        fault = dice.api()  # rolled first, so a limited call does not shift later fault decisions
        if not dice.admit(faults.api_of(request.method, request.path)):
            raise ApiError(429, "FREQUENCY_LIMITED", "频率超限")
        if fault.latency > 0:
            await asyncio.sleep(fault.latency)
        if fault.kind == "frequency_limited":
            raise ApiError(429, "FREQUENCY_LIMITED", "频率超限")
        if fault.kind == "system_error" and not fault.applied:
            raise ApiError(500, "SYSTEM_ERROR", "系统异常，请稍后重试")
        response = await handler(request)
        if fault.applied:
            # The call took effect but its answer is lost: the outcome-unknown case clients must survive.
            raise ApiError(500, "SYSTEM_ERROR", "系统异常，请稍后重试")
        return response
    except ApiError as exc:
        error = exc
    except LedgerError as exc:
        status, code, message = _LEDGER_ERRORS.get(exc.code, (400, "INVALID_REQUEST", exc.message))
        error = ApiError(status, code, message)
    except web.HTTPException as exc:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status, "INVALID_REQUEST")
        error = ApiError(exc.status, code, exc.reason)
    log.info("api.rejected", method=request.method, path=request.path, status=error.status, code=error.code)
    return protocol.signed_answer(key, clock.now(), error.status, error.payload(), code=error.code)


def _place(product: products.Product) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def place(request: web.Request) -> web.Response:
        keys, now = request.app[KEYS], request.app[CLOCK].now()
        order_request = validation.place_order(await request.read(), keys, product, request.app[APPIDS])
        order = request.app[LEDGER].place(order_request, now)
        assert order.prepay_id is not None
        log.info("order.placed", out_trade_no=order.out_trade_no, trade_type=order.trade_type,
                 prepay_id=order.prepay_id)
        return protocol.signed_answer(request[SIGNING_KEY], now, 200, product.answer(order.prepay_id))

    place.__name__ = f"place_{product.name}"
    return place


place_jsapi = _place(products.JSAPI)


async def query_by_out_trade_no(request: web.Request) -> web.Response:
    keys, now = request.app[KEYS], request.app[CLOCK].now()
    validation.query_mchid(request.query, keys)
    order = request.app[LEDGER].get(request.match_info["out_trade_no"], now)
    return protocol.signed_answer(request[SIGNING_KEY], now, 200, _query_view(order))


async def query_by_transaction_id(request: web.Request) -> web.Response:
    keys, now = request.app[KEYS], request.app[CLOCK].now()
    validation.query_mchid(request.query, keys)
    order = request.app[LEDGER].by_transaction_id(request.match_info["transaction_id"], now)
    return protocol.signed_answer(request[SIGNING_KEY], now, 200, _query_view(order))


async def close(request: web.Request) -> web.Response:
    keys, now = request.app[KEYS], request.app[CLOCK].now()
    validation.body_mchid(await request.read(), keys)
    order = request.app[LEDGER].close(request.match_info["out_trade_no"], now)
    log.info("order.closed", out_trade_no=order.out_trade_no, trade_state=str(order.state))
    return protocol.signed_answer(request[SIGNING_KEY], now, 204, None)


async def certificates(request: web.Request) -> web.Response:
    """`GET /v3/certificates` (§10.6): the platform certificates, sealed with the APIv3 key."""
    keys, now, signer = request.app[KEYS], request.app[CLOCK].now(), request.app[SIGNER]
    validation.certificate_query(request.query)
    if signer.mode is KeyMode.PUBKEY and not signer.certificates.listed(now):
        # A merchant that only ever had the public key (WECHATPAY_V3 §2.3, WXP3-QA).
        raise ApiError(500, "SYSTEM_ERROR", "系统繁忙，请稍后重试")
    payload = signer.certificates.download(keys.apiv3_key, now)
    return protocol.signed_answer(request[SIGNING_KEY], now, 200, payload)


async def trade_bill(request: web.Request) -> web.Response:
    now = request.app[CLOCK].now()
    day, bill_type, compress = validation.bill_request(request.query, now.astimezone(SHANGHAI).date())
    request.app[REFUNDS].advance(now)  # refund lines show the status each refund has reached by now
    plain = bills.render(request.app[LEDGER].orders(now), day, bill_type)
    token = request.app[BILLS].issue(plain, compress=compress, now=now)
    # The SDKs strip their own gateway prefix from download_url, so it must name this very server.
    url = f"{request.scheme}://{request.host}/v3/billdownload/file?token={token}"
    # hash_value covers the uncompressed bill even when the download is gzipped (§8.1).
    payload = {"hash_type": "SHA1", "hash_value": crypto.sha1_hex(plain), "download_url": url}
    return protocol.signed_answer(request[SIGNING_KEY], now, 200, payload)


async def download_bill(request: web.Request) -> web.Response:
    found = request.app[BILLS].get(request.query.get("token", ""), request.app[CLOCK].now())
    if found is None:
        raise ApiError(400, "INVALID_REQUEST", "下载链接无效或已过期，请重新申请账单")
    # Not signed (§8.2); served as raw bytes, never with Content-Encoding, so clients see the .gz itself.
    headers = {"Content-Type": "application/octet-stream", "Request-ID": protocol.request_id()}
    return web.Response(body=found.data, headers=headers)


def _query_view(order: Order) -> dict[str, Any]:
    # Real query answers list their keys alphabetically (§4.1 captures).
    return _sorted(order.transaction())


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    return value


def setup(app: web.Application) -> None:
    app.router.add_post(products.JSAPI.path, place_jsapi)
    for product in products.PRODUCTS:
        if product is not products.JSAPI:
            app.router.add_post(product.path, _place(product))
    app.router.add_get("/v3/pay/transactions/out-trade-no/{out_trade_no}", query_by_out_trade_no)
    app.router.add_get("/v3/pay/transactions/id/{transaction_id}", query_by_transaction_id)
    app.router.add_post("/v3/pay/transactions/out-trade-no/{out_trade_no}/close", close)
    app.router.add_get("/v3/bill/tradebill", trade_bill)
    app.router.add_get("/v3/billdownload/file", download_bill)
    app.router.add_get("/v3/certificates", certificates)
