"""The simulated WeChat Pay refund endpoints: `POST /v3/refund/domestic/refunds` and
`GET /v3/refund/domestic/refunds/{out_refund_no}`, with WeChat's error codes for refunds
(docs/wechatpay-refunds.md). Authentication, faults and signing come from `api.api_middleware`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from aiohttp import web

from payflow import logs
from simulator.wechat import protocol, refunds, validation
from simulator.wechat.appkeys import CLOCK, REFUNDS, SIGNING_KEY
from simulator.wechat.ledger import LedgerError
from simulator.wechat.protocol import ApiError

log = logs.get_logger(__name__)

_NOT_EXIST = (404, "RESOURCE_NOT_EXISTS", "订单不存在")
# Ledger codes → WeChat's answer for refunds (sources and what is UNVERIFIED: docs/wechatpay-refunds.md).
REFUND_ERRORS = {
    "ORDER_NOT_EXIST": _NOT_EXIST,
    "NOT_PAID": _NOT_EXIST,  # "请检查你的订单号是否正确且是否已支付，未支付的订单不能发起退款"
    "REFUND_NOT_EXIST": (404, "RESOURCE_NOT_EXISTS", "退款单不存在"),
    "AMOUNT_MISMATCH": (400, "INVALID_REQUEST", "订单金额或退款金额与之前请求不一致，请核实后再试"),
    "PARAMS_MISMATCH": (400, "INVALID_REQUEST", "请求内容和上次请求不一致，请核实后再试。原因主要是商户号不一致，"
                                                "或者商户订单号/商户退款单号已经被其他请求使用。"),
    "ORDER_MISMATCH": (400, "INVALID_REQUEST", "transaction_id与out_trade_no不是同一笔订单"),
    "INVALID_AMOUNT": (400, "INVALID_REQUEST", "申请退款金额超过订单可退金额"),
    "TOO_MANY_REFUNDS": (400, "INVALID_REQUEST", "该订单退款次数已超过50次上限"),
    "REFUND_EXPIRED": (400, "INVALID_REQUEST", "订单已超过退款期限"),
}


@contextlib.contextmanager
def _wechat_errors() -> Iterator[None]:
    try:
        yield
    except LedgerError as exc:
        status, code, message = REFUND_ERRORS.get(exc.code, (400, "INVALID_REQUEST", exc.message))
        raise ApiError(status, code, message) from None


async def apply(request: web.Request) -> web.Response:
    now = request.app[CLOCK].now()
    refund_request = validation.refund(await request.read())
    with _wechat_errors():
        order, refund = request.app[REFUNDS].apply(refund_request, now)
    log.info("refund.answered", out_trade_no=order.out_trade_no, out_refund_no=refund.out_refund_no,
             refund_status=str(refund.status))
    return protocol.signed_answer(request[SIGNING_KEY], now, 200, refunds.view(order, refund))


async def query(request: web.Request) -> web.Response:
    now = request.app[CLOCK].now()
    with _wechat_errors():
        order, refund = request.app[REFUNDS].find(request.match_info["out_refund_no"], now)
    return protocol.signed_answer(request[SIGNING_KEY], now, 200, refunds.view(order, refund))


def setup(app: web.Application) -> None:
    app.router.add_post("/v3/refund/domestic/refunds", apply)
    app.router.add_get("/v3/refund/domestic/refunds/{out_refund_no}", query)
