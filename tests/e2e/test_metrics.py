"""/metrics: what operators alert on, counted where it happens and read from the store at scrape time."""

from __future__ import annotations

import datetime as dt

from prometheus_client.parser import text_string_to_metric_families

from payflow.metrics import GAUGES_MAX_AGE
from payflow.reconcile import Reconciler
from tests import notifications as wx
from tests.e2e.conftest import World


async def _scrape(world: World) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with world.http.get(world.payflow.make_url("/metrics")) as response:
        assert response.status == 200 and response.content_type == "text/plain"
        text = await response.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_the_payment_flow_is_counted(world: World) -> None:
    created = await world.create("order-1")
    await world.pay(created["out_trade_no"])
    await world.notify()
    bogus = wx.envelope(world.keys, wx.transaction(world.keys, created["out_trade_no"], 1999))
    headers = wx.signed_headers(world.keys, bogus, timestamp=int(world.clock.now().timestamp()) - 3600)
    async with world.http.post(world.payflow.make_url("/v1/wechat/notify"), data=bogus, headers=headers) as response:
        assert response.status == 401
    m = await _scrape(world)
    assert m[("payflow_payments", (("state", "synced"),))] == 1
    assert m[("payflow_payments", (("state", "prepaid"),))] == 0
    assert m[("payflow_transitions_total", (("source", "notify"), ("trigger", "pay")))] == 1
    assert m[("payflow_transitions_total", (("source", "backend"), ("trigger", "sync")))] == 1
    assert m[("payflow_notifications_total", (("outcome", "accepted"),))] == 1
    assert m[("payflow_notifications_total", (("outcome", "stale"),))] == 1
    assert m[("payflow_forwards_total", (("outcome", "acked"),))] == 1
    assert m[("payflow_wechat_request_seconds_count", (("endpoint", "jsapi"), ("outcome", "ok")))] == 1
    assert m[("payflow_needs_review", ())] == 0


async def test_backlog_and_oldest_due_age(world: World) -> None:
    await world.create("order-1")  # first query due in 30 s
    m = await _scrape(world)
    assert m[("payflow_sweep_due_backlog", ())] == 0 and m[("payflow_sweep_oldest_due_age_seconds", ())] == 0
    world.advance(100)
    m = await _scrape(world)
    assert m[("payflow_sweep_due_backlog", ())] == 1
    assert m[("payflow_sweep_oldest_due_age_seconds", ())] == 70
    await world.sweep()
    m = await _scrape(world)
    assert m[("payflow_sweep_due_backlog", ())] == 1  # the store's gauges are read at most every 5 s
    world.advance(GAUGES_MAX_AGE)
    m = await _scrape(world)
    assert m[("payflow_sweep_due_backlog", ())] == 0 and m[("payflow_sweep_pass_seconds_count", ())] == 1


async def test_discrepancies_are_counted_once(world: World) -> None:
    async with world.http.post(world.wechat.make_url("/sim/v1/transactions"),
                               json={"out_trade_no": "FOREIGN0009", "amount": 300, "paid": True}) as response:
        assert response.status == 201
    day = world.clock.now().astimezone(dt.timezone(dt.timedelta(hours=8))).date()
    for _ in range(2):
        await Reconciler(world.service, world.service.wechat).run(day)  # type: ignore[arg-type]
    m = await _scrape(world)
    assert m[("payflow_reconciliation_discrepancies_total", (("category", "PLATFORM_MISS"),))] == 1
