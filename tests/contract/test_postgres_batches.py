"""PostgreSQL's group commit (payflow/store/postgres_writes.py): concurrent decisions and transitions share one read
and one write statement, and each item still succeeds or fails alone, as if it had been written by itself."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from payflow import errors, models
from payflow.states import Source, State, Trigger
from payflow.store import Decided, Step, open_store
from payflow.store.postgres import PostgresStore
from tests import factories, postgres_server
from tests.factories import T0

pytestmark = pytest.mark.contract


@pytest.fixture
async def schema(postgres: postgres_server.Server) -> AsyncIterator[tuple[str, str, asyncpg.Connection]]:
    """(the store's URL, its schema, a connection of the test's own)"""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres.url)
    await admin.execute(f"CREATE SCHEMA {name}")
    try:
        yield f"{postgres.url}?search_path={name}&application_name=pf-{name}", name, admin
    finally:
        await admin.execute(f"DROP SCHEMA {name} CASCADE")
        await admin.close()


@pytest.fixture
async def store(schema: tuple[str, str, asyncpg.Connection]) -> AsyncIterator[PostgresStore]:
    opened = await open_store(schema[0])
    assert isinstance(opened, PostgresStore)
    yield opened
    await opened.close()


async def _prepaid(store: PostgresStore) -> models.Payment:
    created = await store.create(factories.payment(), source=Source.API, detail={})
    return await store.transition(created, State.PREPAID, Trigger.PREPAY, source=Source.API, at=T0,
                                  detail={"prepay_id": "wx1"}, changes={"prepay_id": "wx1"})


def _pay(payment: models.Payment | None) -> Step:
    if payment is None:
        return Step("unknown_payment")
    if payment.state is State.PREPAID:
        return Step("accepted", Trigger.PAY, State.NOTIFIED, "notify", {"transaction_id": "42"},
                    {"transaction_id": "42", "paid_amount": payment.amount,
                     "next_attempt_at": T0 + dt.timedelta(seconds=30)}, lease_token="lease-1")
    return Step("already_paid")


def _note(notification_id: str, out_trade_no: str | None) -> models.Notification:
    return models.Notification(notification_id=notification_id, received_at=T0, event_type="TRANSACTION.SUCCESS",
                               out_trade_no=out_trade_no, outcome="", resource={"trade_state": "SUCCESS"},
                               resource_json='{"trade_state": "SUCCESS"}')


def _outcome(decided: Decided | BaseException) -> str:
    if isinstance(decided, BaseException):
        return type(decided).__name__
    return decided.step.outcome if decided.step is not None else "duplicate"


async def test_one_batch_of_decisions_each_written_as_if_alone(store: PostgresStore) -> None:
    payments = [await _prepaid(store) for _ in range(6)]
    paid_before = payments[5]
    await store.decide(paid_before.out_trade_no, _pay, at=T0, notification=_note("EV-old", paid_before.out_trade_no))
    batches = store.writes.stats.batches

    def refuse(_: models.Payment | None) -> Step:
        raise errors.GuardRejected("prepaid", "pay", "no transaction_id")

    calls = [
        *(store.decide(p.out_trade_no, _pay, at=T0, notification=_note(f"EV-{i}", p.out_trade_no))
          for i, p in enumerate(payments[:4])),
        store.decide("PF-nobody", _pay, at=T0, notification=_note("EV-nobody", "PF-nobody")),
        store.decide(payments[4].out_trade_no, refuse, at=T0,
                     notification=_note("EV-refused", payments[4].out_trade_no)),
        store.decide(paid_before.out_trade_no, _pay, at=T0, notification=_note("EV-old", paid_before.out_trade_no)),
        store.decide(paid_before.out_trade_no, _pay, at=T0, notification=_note("EV-late", paid_before.out_trade_no)),
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert [_outcome(r) for r in results] == ["accepted"] * 4 + ["unknown_payment", "GuardRejected", "duplicate",
                                                                  "already_paid"]
    # The first seven went in one batch (EV-late waited for the next: same payment as EV-old).
    assert store.writes.stats.batches == batches + 2
    assert store.writes.stats.largest_batch >= 5
    for payment, decided in zip(payments[:4], results[:4], strict=True):
        assert isinstance(decided, Decided)
        stored = await store.get(payment.out_trade_no)
        assert decided.before == payment and decided.after == stored
        assert stored is not None and (stored.state, stored.version, stored.lease_token) == (
            State.NOTIFIED, payment.version + 1, "lease-1")
        assert [e.trigger for e in await store.events(payment.out_trade_no)] == ["create", "prepay", "pay"]
    assert (await store.get_notification("EV-0")).outcome == "accepted"  # type: ignore[union-attr]
    assert (await store.get_notification("EV-nobody")).outcome == "unknown_payment"  # type: ignore[union-attr]
    assert (await store.get_notification("EV-late")).outcome == "already_paid"  # type: ignore[union-attr]
    assert await store.get_notification("EV-refused") is None
    assert await store.get(payments[4].out_trade_no) == payments[4]


async def test_in_one_batch_a_stale_transition_loses_alone(store: PostgresStore) -> None:
    fresh, moved = await _prepaid(store), await _prepaid(store)
    await store.transition(moved, State.CLOSED, Trigger.CLOSE, source=Source.SWEEPER, at=T0)
    results = await asyncio.gather(
        store.transition(fresh, State.CLOSED, Trigger.CLOSE, source=Source.SWEEPER, at=T0, detail={"why": "x"}),
        store.transition(moved, State.CLOSED, Trigger.CLOSE, source=Source.SWEEPER, at=T0),
        return_exceptions=True)
    assert isinstance(results[1], errors.StaleState)
    assert results[0] == await store.get(fresh.out_trade_no)
    assert isinstance(results[0], models.Payment) and results[0].state is State.CLOSED
    assert results[0].next_attempt_at == fresh.next_attempt_at  # the store keeps what the caller did not change
    assert [e.trigger for e in await store.events(moved.out_trade_no)] == ["create", "prepay", "close"]
    assert (await store.events(fresh.out_trade_no))[-1].detail == {"why": "x"}


async def test_a_batch_the_server_refuses_is_written_item_by_item(
        store: PostgresStore, schema: tuple[str, str, asyncpg.Connection]) -> None:
    _, name, admin = schema
    # Any event with source 'explode' fails in the server: the batch statement fails as a whole.
    await admin.execute(f"""
        CREATE FUNCTION {name}.explode() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.source = 'explode' THEN RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$;
        CREATE TRIGGER explode BEFORE INSERT ON {name}.order_events FOR EACH ROW EXECUTE FUNCTION {name}.explode();
    """)
    good, bad, other = await _prepaid(store), await _prepaid(store), await _prepaid(store)

    def explode(payment: models.Payment | None) -> Step:
        assert payment is not None
        return dataclasses.replace(_pay(payment), source="explode")

    results = await asyncio.gather(
        store.decide(good.out_trade_no, _pay, at=T0, notification=_note("EV-good", good.out_trade_no)),
        store.decide(bad.out_trade_no, explode, at=T0, notification=_note("EV-bad", bad.out_trade_no)),
        store.transition(other, State.CLOSED, Trigger.CLOSE, source=Source.SWEEPER, at=T0),
        return_exceptions=True)
    assert _outcome(results[0]) == "accepted"  # type: ignore[arg-type]
    assert isinstance(results[1], errors.StoreUnavailable)
    assert isinstance(results[2], models.Payment) and results[2].state is State.CLOSED
    assert store.writes.stats.fallbacks == 1
    assert await store.get(bad.out_trade_no) == bad  # nothing of the failed item was kept
    assert await store.get_notification("EV-bad") is None
    assert (await store.get(good.out_trade_no)).state is State.NOTIFIED  # type: ignore[union-attr]


async def test_a_notification_recorded_meanwhile_voids_its_decision_in_a_batch(
        store: PostgresStore, schema: tuple[str, str, asyncpg.Connection]) -> None:
    url, name, admin = schema
    racing, other = await _prepaid(store), await _prepaid(store)
    # Another delivery of EV-race, still in flight: the batch's read does not see it, its INSERT waits for it.
    rival = await asyncpg.connect(url)
    try:
        transaction = rival.transaction()
        await transaction.start()
        await rival.execute("INSERT INTO notifications (notification_id, out_trade_no, event_type, outcome, resource, "
                            "received_at) VALUES ('EV-race', $1, 'TRANSACTION.SUCCESS', 'accepted', '{}', now())",
                            racing.out_trade_no)
        both = asyncio.gather(
            store.decide(racing.out_trade_no, _pay, at=T0, notification=_note("EV-race", racing.out_trade_no)),
            store.decide(other.out_trade_no, _pay, at=T0, notification=_note("EV-other", other.out_trade_no)))
        for _ in range(1000):  # until the batch's INSERT waits for the rival's row (another process's state)
            if await admin.fetchval("SELECT count(*) FROM pg_stat_activity "
                                    "WHERE wait_event_type = 'Lock' AND application_name = $1", f"pf-{name}"):
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the batch never waited for the rival's notification row")
        await transaction.commit()
        raced, plain = await both
    finally:
        await rival.close()
    assert raced.step is None  # a duplicate: the rival's delivery answered for it
    assert await store.get(racing.out_trade_no) == racing  # not moved, no event
    assert [e.trigger for e in await store.events(racing.out_trade_no)] == ["create", "prepay"]
    assert plain.step is not None and plain.step.outcome == "accepted"
    assert store.writes.stats.fallbacks == 1


async def test_deliveries_of_one_notification_in_one_burst_act_once(store: PostgresStore) -> None:
    payments = [await _prepaid(store) for _ in range(5)]
    calls = [store.decide(p.out_trade_no, _pay, at=T0, notification=_note(f"EV-{p.out_trade_no}", p.out_trade_no))
             for p in payments for _ in range(3)]
    results = await asyncio.gather(*calls)
    assert sorted(_outcome(r) for r in results) == ["accepted"] * 5 + ["duplicate"] * 10
    for payment in payments:
        assert [e.trigger for e in await store.events(payment.out_trade_no)].count("pay") == 1
    assert store.writes.stats.largest_batch >= 5
