"""The operator's tools: listing (with `stuck`), recheck, resend, requeue, dismiss — each an event."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from payflow.states import State
from tests.e2e.conftest import World


async def _action(world: World, no: str, action: str, note: str = "checked with the payer") -> tuple[int, dict]:  # type: ignore[type-arg]
    return await world.api("POST", f"/v1/admin/payments/{no}/{action}", json={"note": note})


async def _paid_then_forwards_exhausted(world: World, out_trade_no: str) -> None:
    """Paid at WeChat while the backend fails every delivery, until the schedule ends: needs_review."""
    world.backend_faults(error_rate=1.0)
    await world.pay(out_trade_no)
    await world.notify()
    for delay in world.settings.forward_schedule:
        world.advance(delay)
        await world.sweep()
    assert (await world.payment(out_trade_no)).state is State.NEEDS_REVIEW


async def test_listing_pages_with_an_opaque_cursor(world: World) -> None:
    numbers = sorted([(await world.create(f"order-{i}"))["out_trade_no"] for i in range(5)])
    status, page = await world.api("GET", "/v1/admin/payments?limit=2")
    assert status == 200 and [p["out_trade_no"] for p in page["payments"]] == numbers[:2]
    assert page["payments"][0]["attempts"] == 0 and page["payments"][0]["next_attempt_at"]
    seen = [p["out_trade_no"] for p in page["payments"]]
    while page["next_cursor"]:
        status, page = await world.api("GET", f"/v1/admin/payments?limit=2&cursor={page['next_cursor']}")
        seen += [p["out_trade_no"] for p in page["payments"]]
    assert seen == numbers
    status, page = await world.api("GET", "/v1/admin/payments?state=closed")
    assert status == 200 and page == {"payments": [], "next_cursor": None}
    for bad in ("state=paid", "limit=0", "limit=501", "limit=ten", "cursor=bm9wZQ"):
        status, body = await world.api("GET", f"/v1/admin/payments?{bad}")
        assert status == 422, bad
        assert body["error"]["field"] == bad.split("=")[0]


async def test_stuck_lists_what_missed_its_first_deadline_oldest_first(world: World) -> None:
    world.backend_faults(error_rate=1.0)
    late = await world.create("order-late", expires_in=600)
    world.advance(10)
    forwarding = await world.create("order-forwarding")
    await world.pay(forwarding["out_trade_no"])
    await world.notify()  # the first forward fails: stuck
    fine = await world.create("order-fine")
    world.advance(601)  # `late` expired and was never closed (no sweep ran)
    status, page = await world.api("GET", "/v1/admin/payments?state=stuck&limit=1")
    assert status == 200 and [p["out_trade_no"] for p in page["payments"]] == [late["out_trade_no"]]
    status, page = await world.api("GET", f"/v1/admin/payments?state=stuck&cursor={page['next_cursor']}")
    assert [p["out_trade_no"] for p in page["payments"]] == [forwarding["out_trade_no"]]
    assert fine["out_trade_no"] not in [p["out_trade_no"] for p in page["payments"]]


async def test_recheck_pays_with_source_admin(world: World) -> None:
    world.wechat_faults(never_deliver=1.0)
    created = await world.create("order-1")
    await world.pay(created["out_trade_no"])
    status, body = await _action(world, created["out_trade_no"], "recheck")
    await world.service.drain()
    assert status == 200 and body["outcome"] == "accepted" and body["action"] == "recheck"
    events = await world.events(created["out_trade_no"])
    assert ("recheck", "admin") in [(e.trigger, e.source) for e in events]
    assert ("pay", "admin") in [(e.trigger, e.source) for e in events]
    assert events[[e.trigger for e in events].index("recheck")].detail == {"note": "checked with the payer"}
    assert (await world.payment(created["out_trade_no"])).state is State.SYNCED


async def test_resend_forwards_now(world: World) -> None:
    world.backend_faults(error_rate=1.0)
    created = await world.create("order-1")
    await world.pay(created["out_trade_no"])
    await world.notify()
    world.backend_faults()
    status, body = await _action(world, created["out_trade_no"], "resend", "backend fixed")
    assert status == 200 and body["outcome"] == "acknowledged" and body["payment"]["state"] == "synced"
    assert [(e.trigger, e.source) for e in await world.events(created["out_trade_no"])][-2:] == [
        ("resend", "admin"), ("sync", "backend")]


async def test_requeue_and_dismiss_from_review(world: World) -> None:
    first = await world.create("order-1")
    await world.register_at_backend("order-1")
    world.cancel_at_backend("order-1")
    await world.pay(first["out_trade_no"])
    await world.notify()
    assert (await world.payment(first["out_trade_no"])).state is State.NEEDS_REVIEW
    status, body = await _action(world, first["out_trade_no"], "dismiss", "refunded by hand")
    assert status == 200 and body["payment"]["state"] == "closed"
    last = (await world.events(first["out_trade_no"]))[-1]
    assert (last.trigger, last.source, last.detail["note"]) == ("dismiss", "admin", "refunded by hand")

    second = await world.create("order-2")
    await _paid_then_forwards_exhausted(world, second["out_trade_no"])
    world.backend_faults()
    status, body = await _action(world, second["out_trade_no"], "requeue", "backend is back")
    assert status == 200 and body["payment"]["state"] == "synced"
    assert [e.trigger for e in await world.events(second["out_trade_no"])][-2:] == ["requeue", "sync"]


async def test_actions_that_do_not_apply_answer_409_with_the_state(world: World) -> None:
    created = await world.create("order-1")
    for action in ("resend", "requeue", "dismiss"):
        status, body = await _action(world, created["out_trade_no"], action)
        assert status == 409 and body["error"]["code"] == "action_not_applicable"
        assert body["error"]["state"] == "prepaid"
    assert [e.trigger for e in await world.events(created["out_trade_no"])] == ["create", "prepay"]


async def test_action_input_errors(world: World) -> None:
    created = await world.create("order-1")
    no = created["out_trade_no"]
    assert (await world.api("POST", f"/v1/admin/payments/{no}/recheck", json={}))[0] == 422
    assert (await world.api("POST", f"/v1/admin/payments/{no}/recheck", json={"note": ""}))[0] == 422
    assert (await world.api("POST", f"/v1/admin/payments/{no}/recheck", json={"note": "x" * 501}))[0] == 422
    assert (await world.api("POST", f"/v1/admin/payments/{no}/explode", json={"note": "x"}))[0] == 404
    assert (await world.api("POST", "/v1/admin/payments/NOPE000001/recheck", json={"note": "x"}))[0] == 404
    async with world.http.post(world.payflow.make_url(f"/v1/admin/payments/{no}/recheck"), json={"note": "x"},
                               headers={"Authorization": "Bearer api"}) as response:
        assert response.status == 401  # the api token is not an admin token


async def _while_delivering(world: World, monkeypatch: pytest.MonkeyPatch, no: str,
                            action: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    """Run the operator's `action`, holding its delivery at the backend until a sweeper pass has tried to
    claim the payment (and found nothing: the action's lease holds it); then let it through."""
    gate, delivering = asyncio.Event(), asyncio.Event()
    real = world.service.backend.deliver

    async def held(payment: Any) -> Any:
        delivering.set()
        await gate.wait()
        return await real(payment)

    monkeypatch.setattr(world.service.backend, "deliver", held)
    acting = asyncio.get_running_loop().create_task(_action(world, no, action, "backend fixed"))
    await asyncio.wait_for(delivering.wait(), 5)
    assert await world.service.store.claim_due(world.clock.now(), 10, world.settings.lease) == []
    gate.set()
    return await acting


async def test_a_requeued_forward_holds_a_lease_so_no_sweeper_delivers_it_meanwhile(
    world: World, monkeypatch: pytest.MonkeyPatch,
) -> None:
    created = await world.create("order-1")
    await _paid_then_forwards_exhausted(world, created["out_trade_no"])
    world.backend_faults()
    # While the operator's forward is in flight, a sweeper pass finds nothing to claim.
    status, body = await _while_delivering(world, monkeypatch, created["out_trade_no"], "requeue")
    assert status == 200 and body["payment"]["state"] == "synced"
    assert world.backend_order("order-1").paid_events_received == 1


async def test_a_resend_holds_a_lease_and_waits_for_one_a_sweeper_holds(
    world: World, monkeypatch: pytest.MonkeyPatch,
) -> None:
    world.backend_faults(error_rate=1.0)
    created = await world.create("order-1")
    no = created["out_trade_no"]
    await world.pay(no)
    await world.notify()  # the first forward failed: `notified`, the next forward scheduled
    world.advance(world.settings.forward_schedule[0])
    [leased] = await world.service.store.claim_due(world.clock.now(), 10, world.settings.lease)  # a sweeper's
    status, body = await _action(world, no, "resend", "backend fixed")
    assert status == 409 and "in flight" in body["error"]["message"]
    assert "resend" not in [e.trigger for e in await world.events(no)]  # refused before any audit event

    world.advance(world.settings.lease + 1)  # that sweeper died: its lease ran out
    world.backend_faults()
    status, body = await _while_delivering(world, monkeypatch, no, "resend")
    assert status == 200 and body["outcome"] == "acknowledged"
    assert world.backend_order("order-1").paid_events_received == 1
    assert leased.state is State.NOTIFIED
