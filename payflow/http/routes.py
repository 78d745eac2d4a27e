"""Handlers of payflow's HTTP API (DESIGN §6.2): parse, call the service, render."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from payflow import models
from payflow.http import keys, openapi, payloads
from payflow.http.middlewares import requires
from payflow.metrics import CONTENT_TYPE


@requires("api")
async def create_payment(request: web.Request) -> web.Response:
    new = payloads.new_payment(await payloads.read_json_object(request))
    created = await request.app[keys.SERVICE].create_payment(new)
    return web.json_response(created.view(), status=201 if created.new else 200)


@requires("api")
async def get_payment(request: web.Request) -> web.Response:
    out_trade_no = payloads.out_trade_no(request.match_info["out_trade_no"])
    service = request.app[keys.SERVICE]
    payment = await service.view_payment(out_trade_no)
    # An unpaid payment has refunded nothing: the payer's polls read no refunds.
    refunded = await service.refunding.refunded_amount(out_trade_no) if payment.paid else 0
    return web.json_response(payment.view(refunded))


@requires("api")
async def create_refund(request: web.Request) -> web.Response:
    out_trade_no = payloads.out_trade_no(request.match_info["out_trade_no"])
    new = payloads.new_refund(out_trade_no, await payloads.read_json_object(request))
    refund, created = await request.app[keys.SERVICE].create_refund(new)
    return web.json_response(refund.view(), status=201 if created else 200)


@requires("api")
async def get_refund(request: web.Request) -> web.Response:
    out_refund_no = payloads.out_refund_no(request.match_info["out_refund_no"])
    refund = await request.app[keys.SERVICE].view_refund(out_refund_no)
    return web.json_response(refund.view())


@requires("api")
async def payment_refunds(request: web.Request) -> web.Response:
    out_trade_no = payloads.out_trade_no(request.match_info["out_trade_no"])
    found = await request.app[keys.SERVICE].refunds_of(out_trade_no)
    return web.json_response({"out_trade_no": out_trade_no, "refunds": [r.view() for r in found]})


@requires("admin")
async def admin_refund(request: web.Request) -> web.Response:
    out_trade_no = payloads.out_trade_no(request.match_info["out_trade_no"])
    note, amount = payloads.admin_refund(await payloads.read_json_object(request))
    refund = await request.app[keys.SERVICE].admin_refund(out_trade_no, note=note, amount=amount)
    return web.json_response(refund.view(), status=201)


@requires("api")
async def close_payment(request: web.Request) -> web.Response:
    out_trade_no = payloads.out_trade_no(request.match_info["out_trade_no"])
    payment = await request.app[keys.SERVICE].close_by_payer(out_trade_no)
    return web.json_response(payment.view())


@requires("admin")
async def payment_events(request: web.Request) -> web.Response:
    out_trade_no = payloads.out_trade_no(request.match_info["out_trade_no"])
    events = await request.app[keys.SERVICE].timeline(out_trade_no)
    return web.json_response({"out_trade_no": out_trade_no, "events": [e.view() for e in events]})


@requires("admin")
async def discrepancies(request: web.Request) -> web.Response:
    day = payloads.date_param(request.query.get("date"))
    store = request.app[keys.STORE]
    runs, found = await store.reconciliation_runs(day), await store.discrepancies(day)
    return web.json_response({"date": day.isoformat(), "runs": [r.view() for r in runs],
                              "discrepancies": [d.view() for d in found]})


@requires("admin")
async def list_payments(request: web.Request) -> web.Response:
    state, limit, cursor = payloads.listing(request.query)
    page = await request.app[keys.SERVICE].list_payments(state=state, limit=limit, cursor=cursor)
    return web.json_response({"payments": [_admin_view(p) for p in page.payments], "next_cursor": page.next_cursor})


@requires("admin")
async def payment_action(request: web.Request) -> web.Response:
    out_trade_no = payloads.out_trade_no(request.match_info["out_trade_no"])
    note = payloads.note(await payloads.read_json_object(request))
    result = await request.app[keys.SERVICE].operate(out_trade_no, request.match_info["action"], note)
    return web.json_response({"payment": result.payment.view(), "action": result.action, "outcome": result.outcome})


def _admin_view(payment: models.Payment) -> dict[str, Any]:
    return {**payment.view(), "attempts": payment.attempts, "created_at": payment.created_at.isoformat(),
            "updated_at": payment.updated_at.isoformat(),
            "next_attempt_at": payment.next_attempt_at.isoformat() if payment.next_attempt_at else None}


async def wechat_notify(request: web.Request) -> web.Response:
    # Authenticated by WeChat's signature over the raw body, verified in the service.
    await request.app[keys.SERVICE].handle_notification(request.headers, await request.read())
    return web.Response(status=204)


@requires("metrics")
async def metrics(request: web.Request) -> web.Response:
    collected = request.app[keys.METRICS]
    await collected.refresh(request.app[keys.STORE], request.app[keys.SERVICE].now())
    return web.Response(body=collected.render(), headers={"Content-Type": CONTENT_TYPE})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    await request.app[keys.STORE].ping()  # StoreUnavailable → 503
    return web.json_response({"status": "ready"})


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/payments", create_payment)
    app.router.add_get("/v1/payments/{out_trade_no}", get_payment)
    app.router.add_post("/v1/payments/{out_trade_no}/close", close_payment)
    app.router.add_get("/v1/payments/{out_trade_no}/events", payment_events)
    app.router.add_post("/v1/payments/{out_trade_no}/refunds", create_refund)
    app.router.add_get("/v1/payments/{out_trade_no}/refunds", payment_refunds)
    app.router.add_get("/v1/refunds/{out_refund_no}", get_refund)
    app.router.add_post("/v1/admin/payments/{out_trade_no}/refund", admin_refund)
    app.router.add_get("/v1/admin/discrepancies", discrepancies)
    app.router.add_get("/v1/admin/payments", list_payments)
    app.router.add_post("/v1/admin/payments/{out_trade_no}/{action:recheck|resend|requeue|dismiss}", payment_action)
    app.router.add_post("/v1/wechat/notify", wechat_notify)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    openapi.setup(app)
