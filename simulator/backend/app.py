"""The business backend ("server1") simulator's app: verifies payflow's signed paid events (DESIGN §6.3),
keeps an idempotent ledger of orders, and injects the faults of a `BackendFaults` plan.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from payflow import devkeys, logs, signing
from payflow.clock import Clock, SystemClock
from simulator.backend.appkeys import CLOCK, FAULTS, LEDGER, SECRET
from simulator.backend.faults import BackendFaults, FaultInjector, FaultPlanError, Sleep
from simulator.backend.ledger import (
    Decision,
    InvalidInput,
    Ledger,
    LedgerError,
    OtherEvent,
    Outcome,
    PaidEvent,
    event_type,
    text_field,
)

log = logs.get_logger(__name__)


class _HttpError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.extra = status, code, extra


@web.middleware
async def _error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except InvalidInput as exc:
        body = {"code": "INVALID_REQUEST", "message": str(exc), "field": exc.field}
        return web.json_response(body, status=400)
    except _HttpError as exc:
        return web.json_response({"code": exc.code, "message": str(exc), **exc.extra}, status=exc.status)


async def receive_event(request: web.Request) -> web.StreamResponse:
    with request.app[FAULTS].handling():
        return await _receive_event(request)


async def _receive_event(request: web.Request) -> web.StreamResponse:
    faults, ledger, clock = request.app[FAULTS], request.app[LEDGER], request.app[CLOCK]
    plan, dice = faults.plan, faults.roll()  # one plan per request, even if PUT replaces it meanwhile
    raw = await request.read()
    if plan.in_outage(faults.elapsed()):
        _injected(faults, "outage")
        raise _HttpError(503, "OUTAGE", "backend is in a simulated outage")
    low, high = plan.latency
    if high > 0:
        faults.record("delayed")
        await faults.hold(low + (high - low) * dice.latency)
    if dice.error < plan.error_rate:
        _injected(faults, "error")
        raise _HttpError(500, "INJECTED_ERROR", "simulated internal error; nothing was applied")
    if dice.stall < plan.stall_rate:
        _injected(faults, "stall")
        await faults.hold(plan.stall_seconds)
        raise _HttpError(503, "STALLED", "simulated stall; nothing was applied")

    try:
        signing.verify_signature(request.app[SECRET], request.headers, raw, now=clock.now().timestamp())
    except signing.InvalidSignature as exc:
        ledger.rejected_signatures += 1
        log.warning("paid_event.signature_rejected", reason=str(exc))
        raise _HttpError(401, "INVALID_SIGNATURE", str(exc)) from None
    try:
        data = json.loads(raw)
        kind = event_type(data)
        key = request.headers.get(signing.IDEMPOTENCY_HEADER)
        if kind != "payment.paid":
            other = OtherEvent.parse(data, key)
            order = ledger.receive_other(other)
            log.info("event.received", type=kind, event_id=other.event_id, order_id=order.order_id,
                     out_refund_no=other.out_refund_no)
            return web.json_response({"result": "received", "type": kind, "event_id": other.event_id,
                                      "order_id": order.order_id})
        event = PaidEvent.parse(data, key)
    except (ValueError, InvalidInput) as exc:
        ledger.malformed_events += 1
        field = exc.field if isinstance(exc, InvalidInput) else "body"
        message = str(exc) if isinstance(exc, InvalidInput) else "body: not valid JSON"
        raise _HttpError(400, "INVALID_EVENT", message, field=field) from None

    decision = ledger.receive(event, clock.now())
    log.info(_LOG_EVENT.get(decision.outcome, "paid_event.rejected"), outcome=decision.outcome.value,
             event_id=event.event_id, order_id=event.order_id, out_trade_no=event.out_trade_no)
    if dice.lost_answer < plan.lost_answer_rate:
        _injected(faults, "lost_answer", event_id=event.event_id)
        await faults.hold(plan.stall_seconds)
        # Closing without a status line is the only way to make the answer truly lost; aiohttp's attempt to
        # write the response below then fails quietly on the closed transport.
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=500)
    return _render(decision, event)


_LOG_EVENT = {Outcome.APPLIED: "paid_event.applied", Outcome.DUPLICATE: "paid_event.deduplicated"}


def _injected(faults: FaultInjector, kind: str, **context: Any) -> None:
    faults.record(kind)
    log.info("fault.injected", kind=kind, **context)


def _render(decision: Decision, event: PaidEvent) -> web.Response:
    order = decision.order
    ids = {"order_id": order.order_id, "out_trade_no": event.out_trade_no, "event_id": event.event_id}
    if decision.outcome is Outcome.CANCELLED:
        raise _HttpError(409, "ORDER_CANCELLED", f"order {order.order_id} was cancelled; it will not be "
                         "marked paid (refund the payer)", **ids)
    if decision.outcome is Outcome.AMOUNT_MISMATCH:
        message = f"order {order.order_id} is for {decision.expected} fen, the event says {event.amount}"
        raise _HttpError(422, "AMOUNT_MISMATCH", message, expected=decision.expected, received=event.amount,
                         **ids)
    if decision.outcome is Outcome.ORDER_MISMATCH:
        raise _HttpError(422, "ORDER_MISMATCH", f"this payment belongs to order {decision.expected}",
                         expected=decision.expected, received=event.order_id, **ids)
    return web.json_response({"result": decision.outcome.value, **ids,
                              "applied_event_id": order.applied_event_id})


async def register_order(request: web.Request) -> web.Response:
    data = await _json_body(request)
    order_id = text_field(data, "order_id")
    amount = data.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
        raise InvalidInput("amount", "must be an integer number of fen >= 1")
    out_trade_no = text_field(data, "out_trade_no") if data.get("out_trade_no") is not None else None
    try:
        order, created = request.app[LEDGER].register(order_id, amount, out_trade_no)
    except LedgerError as exc:
        raise _HttpError(409, exc.code, str(exc), order_id=order_id) from None
    if created:
        log.info("order.registered", order_id=order_id, amount=amount)
    return web.json_response(order.to_json(), status=201 if created else 200)


async def cancel_order(request: web.Request) -> web.Response:
    order_id = request.match_info["order_id"]
    try:
        order = request.app[LEDGER].cancel(order_id)
    except LedgerError as exc:
        raise _HttpError(404 if exc.code == "ORDER_NOT_FOUND" else 409, exc.code, str(exc),
                         order_id=order_id) from None
    log.info("order.cancelled", order_id=order_id)
    return web.json_response(order.to_json())


async def list_orders(request: web.Request) -> web.Response:
    ledger = request.app[LEDGER]
    return web.json_response({
        "orders": [order.to_json() for order in ledger.orders.values()],
        "rejected_signatures": ledger.rejected_signatures,
        "totals": {**ledger.totals(), "faults": dict(request.app[FAULTS].injected)},
    })


async def get_order(request: web.Request) -> web.Response:
    order_id = request.match_info["order_id"]
    order = request.app[LEDGER].orders.get(order_id)
    if order is None:
        raise _HttpError(404, "ORDER_NOT_FOUND", f"order {order_id} is not known", order_id=order_id)
    return web.json_response(order.to_json())


async def get_faults(request: web.Request) -> web.Response:
    return web.json_response(request.app[FAULTS].plan.to_json())


async def put_faults(request: web.Request) -> web.Response:
    data = await _json_body(request)
    try:
        plan = BackendFaults.from_json(data)
    except FaultPlanError as exc:
        raise _HttpError(400, "INVALID_FAULTS", str(exc), field=exc.field) from None
    request.app[FAULTS].plan = plan
    log.info("faults.replaced", **plan.to_json())
    return web.json_response(plan.to_json())


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.read())
    except ValueError:
        raise _HttpError(400, "INVALID_JSON", "body: not valid JSON", field="body") from None
    if not isinstance(data, dict):
        raise _HttpError(400, "INVALID_JSON", "body: must be a JSON object", field="body")
    return data


def create_app(
    secret: str | list[str],
    *,
    faults: BackendFaults | None = None,
    seed: int = 0,
    clock: Clock | None = None,
    sleep: Sleep = asyncio.sleep,
) -> web.Application:
    """Build the simulator. No I/O; outage windows count from startup as seen by `clock`."""
    clock = clock or SystemClock()
    app = web.Application(middlewares=[_error_middleware])
    app[SECRET] = secret
    app[CLOCK] = clock
    app[LEDGER] = Ledger()
    app[FAULTS] = FaultInjector(faults or BackendFaults(), seed=seed, clock=clock, sleep=sleep)

    async def faults_ctx(app: web.Application) -> AsyncIterator[None]:
        app[FAULTS].start()
        yield

    async def release_holds(app: web.Application) -> None:
        # on_shutdown runs before aiohttp waits for in-flight handlers: wake every held request now.
        await app[FAULTS].shutdown()

    app.cleanup_ctx.append(faults_ctx)
    app.on_shutdown.append(release_holds)
    app.router.add_post(devkeys.BACKEND_SIM_PATH, receive_event)
    app.router.add_post("/sim/v1/orders", register_order)
    app.router.add_get("/sim/v1/orders", list_orders)
    app.router.add_get("/sim/v1/orders/{order_id}", get_order)
    app.router.add_post("/sim/v1/orders/{order_id}/cancel", cancel_order)
    app.router.add_get("/sim/v1/faults", get_faults)
    app.router.add_put("/sim/v1/faults", put_faults)
    return app
