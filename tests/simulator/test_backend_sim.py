"""The business backend simulator: signature checks, the idempotent ledger, control endpoints, faults, CLI."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import pathlib
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from payflow import devkeys, signing
from payflow.clock import FakeClock
from simulator import backend
from simulator.backend import FAULTS, LEDGER
from simulator.backend.faults import BackendFaults, FaultPlanError
from simulator.backend.ledger import Ledger, Outcome, PaidEvent

ROOT = pathlib.Path(__file__).resolve().parents[2]
SECRET = "backend-test-secret"
T0 = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
EVENTS = "/v1/events"
ORDER_KEYS = {
    "order_id", "out_trade_no", "amount", "status", "registered", "paid_events_received", "duplicates",
    "rejected_events", "event_ids", "applied_event_id", "transaction_id", "paid_amount", "paid_at",
    "first_paid_at", "closed_events", "refunds", "failed_refunds", "other_events_received", "refunded_amount",
}


class Sleeps:
    """Injected sleep that returns at once and remembers what it was asked for."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


class Gate(Sleeps):
    """Injected sleep that never ends by itself: a hold lasts until the app shuts down."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.entered.set()
        await asyncio.Event().wait()


class Sim:
    def __init__(self, client: TestClient, clock: FakeClock) -> None:
        self.client, self.clock = client, clock

    @property
    def app(self) -> web.Application:
        return self.client.server.app  # type: ignore[return-value]

    @property
    def ledger(self) -> Ledger:
        return self.app[LEDGER]

    async def post(self, body: dict[str, Any] | bytes, *, secret: str = SECRET, age: float = 0,
                   headers: dict[str, str] | None = None, **kwargs: Any) -> aiohttp.ClientResponse:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        event_id = body["event_id"] if isinstance(body, dict) else "evt-raw"
        signed = signing.sign_headers(secret, raw, event_id, now=self.clock.now().timestamp() - age)
        headers = signed if headers is None else headers
        return await self.client.post(EVENTS, data=raw, headers=headers, **kwargs)

    async def orders(self) -> dict[str, Any]:
        response = await self.client.get("/sim/v1/orders")
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body

    async def order(self, order_id: str = "order-1") -> dict[str, Any]:
        body = next(o for o in (await self.orders())["orders"] if o["order_id"] == order_id)
        return body

    async def register(self, order_id: str = "order-1", amount: int = 1999,
                       **extra: Any) -> aiohttp.ClientResponse:
        body = {"order_id": order_id, "amount": amount, **extra}
        return await self.client.post("/sim/v1/orders", json=body)


MakeSim = Callable[..., Awaitable[Sim]]


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def make_sim(aiohttp_client: Any, sleeps: Sleeps) -> MakeSim:
    async def make(faults: BackendFaults | None = None, *, seed: int = 7, sleep: Sleeps | None = None) -> Sim:
        clock = FakeClock(T0)
        app = backend.create_app(SECRET, faults=faults, seed=seed, clock=clock, sleep=sleep or sleeps)
        return Sim(await aiohttp_client(app), clock)

    return make


@pytest.fixture
async def sim(make_sim: MakeSim) -> Sim:
    return await make_sim()


def event(n: int = 1, **overrides: Any) -> dict[str, Any]:
    body = {
        "event_id": f"evt-{n}", "out_trade_no": f"T{n:08d}", "order_id": f"order-{n}",
        "transaction_id": f"42000{n:08d}", "amount": 1999, "currency": "CNY",
        "paid_at": "2026-11-26T20:00:00+08:00", "attach": None,
    }
    return {**body, **overrides}


async def _json(response: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body: dict[str, Any] = await response.json()
    return body


# --- paid events ----------------------------------------------------------------------------------------


async def test_a_valid_event_marks_a_registered_order_paid(sim: Sim) -> None:
    await _json(await sim.register(out_trade_no="T00000001"), 201)
    answer = await _json(await sim.post(event(attach="cart-7")), 200)
    assert answer == {"result": "applied", "order_id": "order-1", "out_trade_no": "T00000001",
                      "event_id": "evt-1", "applied_event_id": "evt-1"}
    order = await sim.order()
    assert set(order) == ORDER_KEYS
    assert order == {**order, "status": "paid", "registered": True, "amount": 1999, "paid_amount": 1999,
                     "applied_event_id": "evt-1", "transaction_id": "4200000000001", "event_ids": ["evt-1"],
                     "paid_at": "2026-11-26T20:00:00+08:00", "first_paid_at": T0.isoformat(),
                     "paid_events_received": 1, "duplicates": 0, "rejected_events": 0}
    assert sim.ledger.orders["order-1"].status == "paid"


async def test_the_same_event_three_times_is_paid_once_with_two_duplicates(sim: Sim) -> None:
    await sim.register()
    results = []
    for _ in range(3):
        results.append((await _json(await sim.post(event()), 200))["result"])
        sim.clock.advance(15)  # a retry comes later; the first-applied time must not move
    assert results == ["applied", "duplicate", "duplicate"]
    order = await sim.order()
    assert (order["paid_events_received"], order["duplicates"]) == (3, 2)
    assert order["first_paid_at"] == T0.isoformat()
    totals = (await sim.orders())["totals"]
    assert (totals["paid"], totals["duplicates"], totals["paid_events_received"]) == (1, 2, 3)


async def test_a_second_event_id_for_the_same_out_trade_no_is_a_duplicate(sim: Sim) -> None:
    await _json(await sim.post(event()), 200)
    answer = await _json(await sim.post(event(event_id="evt-other", transaction_id="4200099")), 200)
    assert answer["result"] == "duplicate" and answer["applied_event_id"] == "evt-1"
    order = await sim.order()
    assert order["status"] == "paid" and order["applied_event_id"] == "evt-1"
    assert order["transaction_id"] == "4200000000001"
    assert order["event_ids"] == ["evt-1", "evt-other"] and order["duplicates"] == 1
    assert (await sim.orders())["totals"]["paid"] == 1


async def test_an_event_for_an_unregistered_order_is_paid_and_flagged_unregistered(sim: Sim) -> None:
    await _json(await sim.post(event(5)), 200)
    order = await sim.order("order-5")
    assert order["status"] == "paid" and order["registered"] is False
    assert order["amount"] is None and order["paid_amount"] == 1999
    # What was paid is what later events are held to.
    body = await _json(await sim.post(event(5, amount=1)), 422)
    assert body["code"] == "AMOUNT_MISMATCH"


@pytest.mark.parametrize("case", ["wrong_secret", "stale", "future", "no_headers", "no_signature",
                                  "garbage_signature", "tampered_body"])
async def test_a_bad_signature_is_401_counted_and_changes_nothing(sim: Sim, case: str) -> None:
    await sim.register()
    body = event()
    raw = json.dumps(body).encode()
    good = signing.sign_headers(SECRET, raw, "evt-1", now=sim.clock.now().timestamp())
    if case == "wrong_secret":
        response = await sim.post(body, secret="not-the-secret")
    elif case == "stale":
        response = await sim.post(body, age=301)
    elif case == "future":
        response = await sim.post(body, age=-301)
    elif case == "no_headers":
        response = await sim.post(body, headers={signing.IDEMPOTENCY_HEADER: "evt-1"})
    elif case == "no_signature":
        del good[signing.SIGNATURE_HEADER]
        response = await sim.post(body, headers=good)
    elif case == "garbage_signature":
        response = await sim.post(body, headers={**good, signing.SIGNATURE_HEADER: "v1=00"})
    else:
        response = await sim.client.post(EVENTS, data=json.dumps(event(amount=1)).encode(), headers=good)
    answer = await _json(response, 401)
    assert answer["code"] == "INVALID_SIGNATURE" and SECRET not in json.dumps(answer)
    listing = await sim.orders()
    assert listing["rejected_signatures"] == 1
    assert listing["orders"][0]["status"] == "pending" and listing["orders"][0]["paid_events_received"] == 0


async def test_a_signature_within_tolerance_is_accepted(sim: Sim) -> None:
    await _json(await sim.post(event(), age=299), 200)


@pytest.mark.parametrize(("raw", "field"), [
    (b"{not json", "body"),
    (b"[1, 2]", "body"),
    (json.dumps({k: v for k, v in event().items() if k != "transaction_id"}).encode(), "transaction_id"),
    (json.dumps(event(amount="1999")).encode(), "amount"),
    (json.dumps(event(amount=0)).encode(), "amount"),
    (json.dumps(event(amount=True)).encode(), "amount"),
    (json.dumps(event(order_id="")).encode(), "order_id"),
    (json.dumps(event(attach=7)).encode(), "attach"),
    (json.dumps(event(event_id="evt-not-the-key")).encode(), "Idempotency-Key"),
])
async def test_a_malformed_event_is_400_naming_the_field(sim: Sim, raw: bytes, field: str) -> None:
    headers = signing.sign_headers(SECRET, raw, "evt-1", now=sim.clock.now().timestamp())
    answer = await _json(await sim.client.post(EVENTS, data=raw, headers=headers), 400)
    assert answer["code"] == "INVALID_EVENT" and answer["field"] == field
    listing = await sim.orders()
    assert listing["orders"] == [] and listing["totals"]["malformed_events"] == 1


async def test_an_event_for_a_cancelled_order_is_409_and_never_paid(sim: Sim) -> None:
    await sim.register()
    cancelled = await _json(await sim.client.post("/sim/v1/orders/order-1/cancel"), 200)
    assert cancelled["status"] == "cancelled"
    for _ in range(2):
        answer = await _json(await sim.post(event()), 409)
        assert answer["code"] == "ORDER_CANCELLED" and answer["order_id"] == "order-1"
        assert answer["event_id"] == "evt-1" and "cancelled" in answer["message"]
    order = await sim.order()
    assert order["status"] == "cancelled" and order["applied_event_id"] is None
    assert (order["rejected_events"], order["duplicates"]) == (2, 0)


async def test_an_amount_mismatch_is_422_and_nothing_is_applied(sim: Sim) -> None:
    await sim.register(amount=1999)
    answer = await _json(await sim.post(event(amount=2000)), 422)
    assert answer["code"] == "AMOUNT_MISMATCH"
    assert (answer["expected"], answer["received"]) == (1999, 2000)
    order = await sim.order()
    assert order["status"] == "pending" and order["rejected_events"] == 1
    assert order["paid_amount"] is None


# --- control endpoints ----------------------------------------------------------------------------------


async def test_registering_is_idempotent_and_conflicts_are_409(sim: Sim) -> None:
    created = await _json(await sim.register(amount=500), 201)
    assert set(created) == ORDER_KEYS
    assert created == {**created, "order_id": "order-1", "out_trade_no": None, "amount": 500,
                       "status": "pending", "registered": True, "paid_events_received": 0,
                       "first_paid_at": None}
    assert await _json(await sim.register(amount=500), 200) == created
    conflict = await _json(await sim.register(amount=501), 409)
    assert conflict["code"] == "ORDER_EXISTS" and conflict["order_id"] == "order-1"
    await _json(await sim.register("order-2", out_trade_no="T2"), 201)
    taken = await _json(await sim.register("order-3", out_trade_no="T2"), 409)
    assert taken["code"] == "OUT_TRADE_NO_TAKEN"


@pytest.mark.parametrize(("body", "field"), [
    ({"amount": 5}, "order_id"),
    ({"order_id": "o", "amount": 0}, "amount"),
    ({"order_id": "o", "amount": "5"}, "amount"),
    ({"order_id": "o", "amount": 5, "out_trade_no": 9}, "out_trade_no"),
])
async def test_registering_validates_the_body(sim: Sim, body: dict[str, Any], field: str) -> None:
    answer = await _json(await sim.client.post("/sim/v1/orders", json=body), 400)
    assert answer["code"] == "INVALID_REQUEST" and answer["field"] == field
    assert (await sim.orders())["orders"] == []


async def test_a_non_json_control_body_is_400(sim: Sim) -> None:
    answer = await _json(await sim.client.post("/sim/v1/orders", data=b"nope"), 400)
    assert answer["code"] == "INVALID_JSON"


async def test_cancel_unknown_is_404_and_cancel_paid_is_409(sim: Sim) -> None:
    unknown = await _json(await sim.client.post("/sim/v1/orders/ghost/cancel"), 404)
    assert unknown["code"] == "ORDER_NOT_FOUND"
    await sim.post(event())
    answer = await _json(await sim.client.post("/sim/v1/orders/order-1/cancel"), 409)
    assert answer["code"] == "ORDER_PAID"
    assert (await sim.order())["status"] == "paid"


async def test_the_orders_listing_shows_every_order_and_the_totals(sim: Sim) -> None:
    await sim.register("order-1")
    await sim.register("order-2")
    await sim.register("order-3")
    await sim.client.post("/sim/v1/orders/order-3/cancel")
    await sim.post(event(1))
    await sim.post(event(1))
    await sim.post(event(4))  # unregistered
    await sim.post(event(2), secret="wrong")
    listing = await sim.orders()
    assert set(listing) == {"orders", "rejected_signatures", "totals"}
    assert [(o["order_id"], o["status"], o["registered"]) for o in listing["orders"]] == [
        ("order-1", "paid", True), ("order-2", "pending", True), ("order-3", "cancelled", True),
        ("order-4", "paid", False)]
    assert listing["rejected_signatures"] == 1
    assert listing["totals"] == {
        "orders": 4, "registered": 3, "pending": 1, "paid": 2, "cancelled": 1, "paid_events_received": 3,
        "duplicates": 1, "rejected_events": 0, "rejected_signatures": 1, "malformed_events": 0,
        "closed_orders": 0, "refunds": 0, "refunded_amount": 0, "failed_refunds": 0,
        "faults": {"outage": 0, "error": 0, "delayed": 0, "stall": 0, "lost_answer": 0},
    }
    one = await _json(await sim.client.get("/sim/v1/orders/order-4"), 200)
    assert one == listing["orders"][3]
    await _json(await sim.client.get("/sim/v1/orders/ghost"), 404)


# --- faults ---------------------------------------------------------------------------------------------


async def test_faults_are_read_and_replaced_with_strict_validation(sim: Sim) -> None:
    assert await _json(await sim.client.get("/sim/v1/faults"), 200) == BackendFaults().to_json()
    plan = {"error_rate": 0.25, "latency": [0.1, 0.2], "outages": [[10, 20], [30, 31]],
            "lost_answer_rate": 0.05}
    replaced = await _json(await sim.client.put("/sim/v1/faults", json=plan), 200)
    assert replaced == {**BackendFaults().to_json(), **plan}
    assert sim.app[FAULTS].plan == BackendFaults(error_rate=0.25, latency=(0.1, 0.2),
                                                 outages=((10, 20), (30, 31)), lost_answer_rate=0.05)
    for bad, field in (({"error_rate": 1.5}, "error_rate"), ({"surprise": 1}, "surprise"),
                       ({"stall_seconds": 0}, "stall_seconds"), ({"outages": [[5, 5]]}, "outages[0]"),
                       ({"latency": [2, 1]}, "latency"), ({"stall_rate": "0.1"}, "stall_rate")):
        answer = await _json(await sim.client.put("/sim/v1/faults", json=bad), 400)
        assert answer["code"] == "INVALID_FAULTS" and answer["field"] == field, answer
    assert await _json(await sim.client.get("/sim/v1/faults"), 200) == replaced  # unchanged by rejects


@pytest.mark.parametrize(("data", "field"), [
    ({"error_rate": -0.1}, "error_rate"),
    ({"lost_answer_rate": True}, "lost_answer_rate"),
    ({"stall_rate": float("nan")}, "stall_rate"),
    ({"stall_seconds": float("inf")}, "stall_seconds"),
    ({"latency": 3}, "latency"),
    ({"latency": [-1, 1]}, "latency"),
    ({"outages": [[0, 5], [9, 3]]}, "outages[1]"),
    ({"outages": "10:20"}, "outages"),
    ({"error_rate": 0.1, "stall": 1}, "stall"),
    ([], "faults"),
])
def test_fault_json_is_strict_and_names_the_field(data: Any, field: str) -> None:
    with pytest.raises(FaultPlanError) as caught:
        BackendFaults.from_json(data)
    assert caught.value.field == field and str(caught.value).startswith(field)
    assert isinstance(caught.value, ValueError)


def test_fault_json_round_trips() -> None:
    plan = BackendFaults(error_rate=0.2, latency=(0.5, 1.5), outages=((10, 20),), stall_rate=0.1,
                         stall_seconds=45, lost_answer_rate=0.05)
    assert BackendFaults.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    assert BackendFaults.from_json({}) == BackendFaults()


async def test_error_rate_one_answers_500_and_applies_nothing(make_sim: MakeSim) -> None:
    sim = await make_sim(BackendFaults(error_rate=1.0))
    await sim.register()
    for _ in range(3):
        assert (await _json(await sim.post(event()), 500))["code"] == "INJECTED_ERROR"
    listing = await sim.orders()
    assert listing["orders"][0]["status"] == "pending" and listing["orders"][0]["paid_events_received"] == 0
    assert listing["totals"]["faults"]["error"] == 3


async def test_the_dice_are_seeded(make_sim: MakeSim) -> None:
    runs = []
    for seed in (3, 3, 4):
        sim = await make_sim(BackendFaults(error_rate=0.5), seed=seed)
        runs.append([(await sim.post(event(n))).status for n in range(24)])
    assert runs[0] == runs[1] != runs[2]
    assert {200, 500} == set(runs[0])


async def test_an_outage_window_follows_the_injected_clock(make_sim: MakeSim) -> None:
    sim = await make_sim(BackendFaults(outages=((10, 20),)))
    await _json(await sim.post(event(1)), 200)
    sim.clock.advance(10)
    assert (await _json(await sim.post(event(2)), 503))["code"] == "OUTAGE"
    sim.clock.advance(9.5)
    await _json(await sim.post(event(3)), 503)
    await _json(await sim.client.get("/sim/v1/orders"), 200)  # control endpoints stay up for the driver
    sim.clock.advance(0.5)
    await _json(await sim.post(event(2)), 200)
    listing = await sim.orders()
    assert [o["order_id"] for o in listing["orders"]] == ["order-1", "order-2"]
    assert listing["totals"]["faults"]["outage"] == 2


async def test_latency_sleeps_through_the_injected_sleep(make_sim: MakeSim, sleeps: Sleeps) -> None:
    sim = await make_sim(BackendFaults(latency=(0.5, 1.5)))
    for n in range(5):
        await _json(await sim.post(event(n)), 200)
    assert len(sleeps.calls) == 5 and all(0.5 <= s <= 1.5 for s in sleeps.calls)
    assert len(set(sleeps.calls)) == 5
    assert (await sim.orders())["totals"]["faults"]["delayed"] == 5


async def test_a_stall_holds_past_the_timeout_and_applies_nothing(make_sim: MakeSim, sleeps: Sleeps) -> None:
    sim = await make_sim(BackendFaults(stall_rate=1.0, stall_seconds=45))
    await sim.register()
    assert (await _json(await sim.post(event()), 503))["code"] == "STALLED"
    assert sleeps.calls == [45.0]
    order = await sim.order()
    assert order["status"] == "pending" and order["paid_events_received"] == 0


async def test_a_lost_answer_closes_the_connection_after_applying(make_sim: MakeSim, sleeps: Sleeps) -> None:
    sim = await make_sim(BackendFaults(lost_answer_rate=1.0))
    await sim.register()
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await sim.post(event())
    assert sleeps.calls == [30.0]  # held for the default stall first, past payflow's timeout
    assert (await sim.order())["status"] == "paid"
    await _json(await sim.client.put("/sim/v1/faults", json={}), 200)
    assert (await _json(await sim.post(event()), 200))["result"] == "duplicate"
    order = await sim.order()
    assert (order["paid_events_received"], order["duplicates"]) == (2, 1)
    assert (await sim.orders())["totals"]["faults"]["lost_answer"] == 1


async def test_a_lost_answer_is_held_until_the_client_gives_up() -> None:
    # A plain AppRunner, as `serve` uses: unlike aiohttp's TestServer it does not cancel a handler whose
    # client hung up, so the hold really outlives the client and shutdown must release it.
    gate, clock = Gate(), FakeClock(T0)
    app = backend.create_app(SECRET, faults=BackendFaults(lost_answer_rate=1.0), clock=clock, sleep=gate)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = "http://{}:{}{}".format(*runner.addresses[0][:2], EVENTS)
        raw = json.dumps(event()).encode()
        async with aiohttp.ClientSession() as session:
            headers = signing.sign_headers(SECRET, raw, "evt-1", now=clock.now().timestamp())
            attempt = asyncio.ensure_future(session.post(url, data=raw, headers=headers,
                                                         timeout=aiohttp.ClientTimeout(total=0.5)))
            await gate.entered.wait()
            assert app[LEDGER].orders["order-1"].status == "paid"  # applied while the client still waits
            with pytest.raises(TimeoutError):
                await attempt
            app[FAULTS].plan = BackendFaults()
            async with session.post(url, data=raw, headers=headers) as retry:
                assert retry.status == 200 and (await retry.json())["result"] == "duplicate"
        assert app[FAULTS].busy == 1  # the first request is still held at the gate
    finally:
        await runner.cleanup()  # must release the hold and let its handler finish, at once
    assert app[FAULTS].busy == 0 and gate.calls == [30.0]


# --- ledger (pure) --------------------------------------------------------------------------------------


def _paid(n: int = 1, **overrides: Any) -> PaidEvent:
    body = event(n, **overrides)
    return PaidEvent.parse(body, body["event_id"])


def test_ledger_outcomes() -> None:
    ledger = Ledger()
    ledger.register("order-1", 1999, "T00000001")
    assert ledger.receive(_paid(1, amount=1), T0).outcome is Outcome.AMOUNT_MISMATCH
    assert ledger.receive(_paid(1), T0).outcome is Outcome.APPLIED
    assert ledger.receive(_paid(1), T0).outcome is Outcome.DUPLICATE
    # An out_trade_no belongs to one order: an event naming another order is refused, not applied.
    stray = ledger.receive(_paid(1, order_id="order-9"), T0)
    assert stray.outcome is Outcome.ORDER_MISMATCH and stray.expected == "order-1"
    assert "order-9" not in ledger.orders
    order = ledger.orders["order-1"]
    assert (order.paid_events_received, order.duplicates, order.rejected_events) == (3, 1, 1)
    ledger.register("order-2", 5)
    ledger.cancel("order-2")
    assert ledger.receive(_paid(2, amount=5), T0).outcome is Outcome.CANCELLED
    assert ledger.totals()["paid"] == 1


def test_ledger_fills_the_out_trade_no_from_the_applied_event() -> None:
    ledger = Ledger()
    ledger.register("order-1", 1999)
    ledger.receive(_paid(1), T0)
    assert ledger.orders["order-1"].out_trade_no == "T00000001"
    # A retry keyed only by the event_id or the out_trade_no still finds the order.
    assert ledger.receive(_paid(1), T0).outcome is Outcome.DUPLICATE


# --- command line ---------------------------------------------------------------------------------------


def _parser(prefix: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    if prefix:
        BackendFaults.add_arguments(parser, prefix=prefix)
    else:
        backend.add_arguments(parser)
    return parser


def test_cli_flags_mirror_the_fault_plan() -> None:
    args = _parser().parse_args([
        "--keys", "k", "--seed", "9", "--error-rate", "0.2", "--latency", "0.1:0.3", "--outage", "10:20",
        "--outage", "30:40.5", "--stall-rate", "0.1", "--stall-seconds", "45", "--lost-answer-rate", "0.05",
    ])
    expected = BackendFaults(error_rate=0.2, latency=(0.1, 0.3), outages=((10, 20), (30, 40.5)),
                             stall_rate=0.1, stall_seconds=45, lost_answer_rate=0.05)
    assert BackendFaults.from_args(args) == expected
    assert BackendFaults.from_json(expected.to_json()) == expected
    assert (args.keys, args.seed, args.host) == ("k", 9, "127.0.0.1")
    assert args.port == devkeys.DEFAULT_BACKEND_SIM_PORT
    assert BackendFaults.from_args(_parser().parse_args(["--keys", "k"])) == BackendFaults()
    fixed = BackendFaults.from_args(_parser().parse_args(["--keys", "k", "--latency", "0.25"]))
    assert fixed.latency == (0.25, 0.25)


def test_cli_flags_can_carry_a_prefix() -> None:
    args = _parser("backend-").parse_args(["--backend-error-rate", "0.5", "--backend-outage", "1:2"])
    expected = BackendFaults(error_rate=0.5, outages=((1, 2),))
    assert BackendFaults.from_args(args, prefix="backend-") == expected


@pytest.mark.parametrize("argv", [["--error-rate", "2"], ["--error-rate", "x"], ["--outage", "20:10"],
                                  ["--outage", "10"], ["--latency", "3:1"], ["--lost-answer-rate", "-1"]])
def test_cli_rejects_bad_fault_flags(argv: list[str]) -> None:
    with pytest.raises(argparse.ArgumentError):
        _parser().parse_args(["--keys", "k", *argv])


def test_main_exits_2_on_a_missing_key_directory(tmp_path: pathlib.Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["--keys", str(tmp_path / "absent")])
    assert backend.main(args) == 2
    err = capsys.readouterr().err
    assert "backend-sim: cannot start" in err and "keys.json" in err and "Traceback" not in err


def test_main_exits_2_on_a_bad_fault_plan(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    devkeys.write_keyset(tmp_path)
    args = _parser().parse_args(["--keys", str(tmp_path), "--stall-seconds", "0"])
    assert backend.main(args) == 2
    assert "stall_seconds" in capsys.readouterr().err


async def test_the_simulator_process_serves_and_stops_on_sigterm(tmp_path: pathlib.Path) -> None:
    keys = devkeys.write_keyset(tmp_path / "keys")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulator.backend", "--keys", str(keys.directory), "--port", "0",
        cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE)
    assert process.stderr is not None
    try:
        lines: list[dict[str, Any]] = []
        while not lines or lines[-1].get("event") != "backend_sim.listening":
            line = await asyncio.wait_for(process.stderr.readline(), timeout=30)
            assert line, "the simulator exited before listening"
            lines.append(json.loads(line))
        base = f"http://{lines[-1]['addresses'][0]}"
        raw = json.dumps(event()).encode()
        headers = signing.sign_headers(keys.backend_secret, raw, "evt-1")
        async with aiohttp.ClientSession() as session:
            async with session.post(base + devkeys.BACKEND_SIM_PATH, data=raw, headers=headers) as response:
                assert response.status == 200
            async with session.get(base + "/sim/v1/orders") as response:
                assert (await response.json())["totals"]["paid"] == 1
        process.send_signal(signal.SIGTERM)
        rest = (await asyncio.wait_for(process.stderr.read(), timeout=30)).decode()
        assert await process.wait() == 0
        assert "backend_sim.stopped" in rest and keys.backend_secret not in rest
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
