"""Control endpoints under `/sim/v1` (DESIGN §6.6): the payer pays, operators refund or record orders, close
or mark abnormal a processing refund, the ledger and the fault plan are read and replaced. Unauthenticated:
test tooling only.

Errors are `{"error": {"code": ..., "message": ...}}`: 400 for bad input, 404 for an unknown order on
reads, 409 when the order's state forbids the action.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from aiohttp import web

from payflow import logs
from simulator.wechat import products
from simulator.wechat.appkeys import CLOCK, FAULTS, LEDGER, NOTIFIER, REFUNDS
from simulator.wechat.faults import WechatFaults
from simulator.wechat.ledger import LedgerError, Order, Refund, rfc3339

log = logs.get_logger(__name__)


class ControlError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@web.middleware
async def control_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    if not request.path.startswith("/sim/"):
        return await handler(request)
    try:
        return await handler(request)
    except ControlError as exc:
        status, code, message = exc.status, exc.code, exc.message
    except LedgerError as exc:
        status, code, message = 409, exc.code, exc.message
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def pay(request: web.Request) -> web.Response:
    body = await _body(request)
    now = request.app[CLOCK].now()
    order = request.app[LEDGER].pay(request.match_info["out_trade_no"], now, _optional_amount(body),
                                    openid=_optional_string(body, "openid"))
    if order.notify_url is not None:
        request.app[NOTIFIER].enqueue(order, now)
    log.info("order.paid", out_trade_no=order.out_trade_no, amount=order.paid_amount)
    return web.json_response(_view(request, order))


async def start_paying(request: web.Request) -> web.Response:
    order = request.app[LEDGER].start_paying(request.match_info["out_trade_no"], request.app[CLOCK].now())
    return web.json_response(_view(request, order))


async def refund(request: web.Request) -> web.Response:
    body = await _body(request)
    out_refund_no = _optional_string(body, "out_refund_no")
    no, now = request.match_info["out_trade_no"], request.app[CLOCK].now()
    request.app[LEDGER].refund(no, now, _optional_amount(body), out_refund_no)
    log.info("order.refunded", out_trade_no=no)
    return web.json_response(_view(request, request.app[LEDGER].get(no, now)))


async def refund_outside(request: web.Request) -> web.Response:
    """A refund made on the merchant platform: PROCESSING, then it completes and notifies like an API one."""
    body = await _body(request)
    order, refund = request.app[REFUNDS].refund_outside(
        request.match_info["out_trade_no"], request.app[CLOCK].now(), _optional_amount(body),
        out_refund_no=_optional_string(body, "out_refund_no"), reason=_optional_string(body, "reason"))
    return web.json_response(_refund_view(request, order, refund), status=201)


async def list_refunds(request: web.Request) -> web.Response:
    found = request.app[REFUNDS].refunds(request.app[CLOCK].now())
    return web.json_response({"refunds": [_refund_view(request, order, refund) for order, refund in found]})


async def get_refund(request: web.Request) -> web.Response:
    try:
        order, refund = request.app[REFUNDS].find(request.match_info["out_refund_no"], request.app[CLOCK].now())
    except LedgerError as exc:
        raise ControlError(404, exc.code, exc.message) from None
    return web.json_response(_refund_view(request, order, refund))


async def close_refund(request: web.Request) -> web.Response:
    order, refund = request.app[REFUNDS].close(request.match_info["out_refund_no"], request.app[CLOCK].now())
    return web.json_response(_refund_view(request, order, refund))


async def abnormal_refund(request: web.Request) -> web.Response:
    desk, now = request.app[REFUNDS], request.app[CLOCK].now()
    order, refund = desk.mark_abnormal(request.match_info["out_refund_no"], now)
    return web.json_response(_refund_view(request, order, refund))


async def record(request: web.Request) -> web.Response:
    body = await _body(request)
    if body.get("paid") is not True:
        raise ControlError(400, "INVALID_INPUT", 'paid: only paid orders can be recorded (send "paid": true)')
    order = request.app[LEDGER].record_paid(
        _required_string(body, "out_trade_no"), _required_amount(body), request.app[CLOCK].now(),
        openid=_optional_string(body, "openid") or "oSimulatorRecordedPayer000000",
        description=_optional_string(body, "description") or "recorded order",
        attach=_optional_string(body, "attach") or "",
        success_time=_time(body, "success_time"),
        appid=_optional_string(body, "appid"),
        trade_type=_trade_type(body),
    )
    log.info("order.recorded", out_trade_no=order.out_trade_no, amount=order.paid_amount)
    return web.json_response(_view(request, order), status=201)


async def list_transactions(request: web.Request) -> web.Response:
    orders = request.app[LEDGER].orders(request.app[CLOCK].now())
    return web.json_response({"transactions": [_view(request, order) for order in orders]})


async def get_transaction(request: web.Request) -> web.Response:
    try:
        order = request.app[LEDGER].get(request.match_info["out_trade_no"], request.app[CLOCK].now())
    except LedgerError as exc:
        raise ControlError(404, exc.code, exc.message) from None
    return web.json_response(_view(request, order))


async def get_faults(request: web.Request) -> web.Response:
    return web.json_response(request.app[FAULTS].plan.to_json())


async def put_faults(request: web.Request) -> web.Response:
    try:
        plan = WechatFaults.from_json(await request.read())
    except ValueError as exc:
        raise ControlError(400, "INVALID_FAULT_PLAN", str(exc)) from None
    request.app[FAULTS].plan = plan
    log.info("faults.replaced", **plan.to_json())
    return web.json_response(plan.to_json())


def _view(request: web.Request, order: Order) -> dict[str, Any]:
    request.app[REFUNDS].advance(request.app[CLOCK].now())  # refund statuses as of now
    notification = request.app[NOTIFIER].get(order.out_trade_no)
    notifications = notification.to_json() if notification is not None else {
        "id": None, "state": "none", "attempts": 0, "next_attempt_at": None,
        "sent": 0, "dropped": 0, "acked": 0, "failed": 0, "duplicates": 0,
        "probes": 0, "probes_acked": 0, "forged_acked": 0,
    }
    return {
        "out_trade_no": order.out_trade_no,
        "trade_state": str(order.state),
        "amount": order.total,
        "paid_amount": order.paid_amount,
        "refunded_amount": order.refunded_amount,
        "transaction_id": order.transaction_id,
        "success_time": None if order.success_time is None else rfc3339(order.success_time),
        "time_expire": rfc3339(order.time_expire),
        "prepay_id": order.prepay_id,
        "placed": order.params is not None,
        "notify_url": order.notify_url,
        "refunds": [
            {"refund_id": r.refund_id, "out_refund_no": r.out_refund_no, "amount": r.amount,
             "created": rfc3339(r.created), "status": str(r.status),
             "success_time": None if r.success_time is None else rfc3339(r.success_time)}
            for r in order.refunds
        ],
        "notifications": notifications,
    }


def _refund_view(request: web.Request, order: Order, refund: Refund) -> dict[str, Any]:
    return {
        "out_refund_no": refund.out_refund_no,
        "refund_id": refund.refund_id,
        "out_trade_no": order.out_trade_no,
        "amount": refund.amount,
        "status": str(refund.status),
        "created": rfc3339(refund.created),
        "success_time": None if refund.success_time is None else rfc3339(refund.success_time),
        "due": None if refund.due is None else rfc3339(refund.due),
        "via": "api" if refund.params is not None else "platform",
        "notify_url": refund.notify_url or order.notify_url,
        "refunded_amount": order.refunded_amount,
        "trade_state": str(order.state),
        "notifications": [{"event_type": n.event_type, **n.to_json()}
                          for n in request.app[NOTIFIER].refund_notifications(refund.out_refund_no)],
    }


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise ControlError(400, "INVALID_INPUT", "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ControlError(400, "INVALID_INPUT", "body must be a JSON object")
    return body


def _optional_amount(body: dict[str, Any]) -> int | None:
    return None if body.get("amount") is None else _required_amount(body)


def _required_amount(body: dict[str, Any]) -> int:
    value = body.get("amount")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ControlError(400, "INVALID_INPUT", f"amount: expected an integer (fen) >= 1, got {value!r}")
    return value


def _optional_string(body: dict[str, Any], name: str) -> str | None:
    return None if body.get(name) is None else _required_string(body, name)


def _required_string(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ControlError(400, "INVALID_INPUT", f"{name}: expected a non-empty string, got {value!r}")
    return value


def _trade_type(body: dict[str, Any]) -> str:
    trade_type = _optional_string(body, "trade_type") or "JSAPI"
    if trade_type not in products.BY_TRADE_TYPE:
        raise ControlError(400, "INVALID_INPUT", f"trade_type: expected one of {', '.join(products.BY_TRADE_TYPE)}, "
                                                 f"got {trade_type!r}")
    return trade_type


def _time(body: dict[str, Any], name: str) -> dt.datetime | None:
    value = _optional_string(body, name)
    if value is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ControlError(400, "INVALID_INPUT", f"{name}: expected RFC 3339 with an offset, got {value!r}")
    return moment


def setup(app: web.Application) -> None:
    app.router.add_get("/sim/v1/transactions", list_transactions)
    app.router.add_post("/sim/v1/transactions", record)
    app.router.add_get("/sim/v1/transactions/{out_trade_no}", get_transaction)
    app.router.add_post("/sim/v1/transactions/{out_trade_no}/pay", pay)
    app.router.add_post("/sim/v1/transactions/{out_trade_no}/paying", start_paying)
    app.router.add_post("/sim/v1/transactions/{out_trade_no}/refund", refund)
    app.router.add_post("/sim/v1/transactions/{out_trade_no}/refunds", refund_outside)
    app.router.add_get("/sim/v1/refunds", list_refunds)
    app.router.add_get("/sim/v1/refunds/{out_refund_no}", get_refund)
    app.router.add_post("/sim/v1/refunds/{out_refund_no}/close", close_refund)
    app.router.add_post("/sim/v1/refunds/{out_refund_no}/abnormal", abnormal_refund)
    app.router.add_get("/sim/v1/faults", get_faults)
    app.router.add_put("/sim/v1/faults", put_faults)
