"""PostgreSQL-only behaviour: recovery after the database drops every connection, migrations under
an advisory lock, driver errors mapped at the boundary."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from payflow import errors
from payflow.states import Source
from payflow.store import open_store
from payflow.store.postgres import PostgresStore
from payflow.store.postgres_schema import MIGRATIONS
from tests import factories, postgres_server


@pytest.fixture
async def schema_url(postgres: postgres_server.Server) -> AsyncIterator[tuple[str, str]]:
    import uuid

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres.url)
    await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema, f"{postgres.url}?search_path={schema}&application_name=payflow-{schema}"
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


async def test_replicas_starting_together_migrate_once(schema_url: tuple[str, str],
                                                      postgres: postgres_server.Server) -> None:
    schema, url = schema_url
    stores = await asyncio.gather(*(open_store(url) for _ in range(4)))
    try:
        admin = await asyncpg.connect(postgres.url)
        try:
            versions = await admin.fetch(f"SELECT version FROM {schema}.payflow_schema ORDER BY version")
        finally:
            await admin.close()
        assert [v[0] for v in versions] == list(range(1, len(MIGRATIONS) + 1))
    finally:
        for store in stores:
            await store.close()


async def test_a_newer_schema_is_refused_as_a_store_error(schema_url: tuple[str, str],
                                                          postgres: postgres_server.Server) -> None:
    schema, url = schema_url
    await (await open_store(url)).close()
    admin = await asyncpg.connect(postgres.url)
    try:
        await admin.execute(f"INSERT INTO {schema}.payflow_schema (version) VALUES ($1)", len(MIGRATIONS) + 1)
    finally:
        await admin.close()
    with pytest.raises(errors.StoreUnavailable, match="newer than this payflow"):  # a message, not a traceback
        await open_store(url)


async def test_the_pool_recovers_after_the_database_drops_every_connection(schema_url: tuple[str, str],
                                                                           postgres: postgres_server.Server) -> None:
    schema, url = schema_url
    store = await open_store(url)
    assert isinstance(store, PostgresStore)
    try:
        payment = await store.create(factories.payment(), source=Source.API, detail={})
        admin = await asyncpg.connect(postgres.url)
        try:
            # What a database restart does to a client: every server connection is gone.
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE application_name = $1", f"payflow-{schema}")
        finally:
            await admin.close()
        failures = 0
        for _ in range(20):
            try:
                await store.ping()
                break
            except errors.StoreUnavailable:  # what /readyz and the API answer with (503) meanwhile
                failures += 1
        else:
            pytest.fail("the store never recovered")
        assert failures <= 10
        assert await store.get(payment.out_trade_no) == payment  # nothing acknowledged was lost
    finally:
        await store.close()


async def test_an_unreachable_database_is_a_store_error() -> None:
    with pytest.raises(errors.StoreUnavailable):
        await open_store("postgresql://postgres@127.0.0.1:1/test")


async def test_a_v4_database_upgrades_to_refunds_keeping_its_rows(schema_url: tuple[str, str],
                                                                   postgres: postgres_server.Server) -> None:
    import datetime as dt

    from payflow.states import State, Trigger

    schema, url = schema_url
    admin = await asyncpg.connect(postgres.url)
    try:
        await admin.execute(f"SET search_path = {schema}")
        async with admin.transaction():  # the schema as payflow v4 left it
            for migration in MIGRATIONS[:4]:
                for statement in migration:
                    await admin.execute(statement)
            await admin.execute("CREATE TABLE payflow_schema (version INTEGER NOT NULL)")
            await admin.execute("INSERT INTO payflow_schema (version) VALUES (1), (2), (3), (4)")
            await admin.execute(
                "INSERT INTO payments (out_trade_no, order_id, amount, currency, description, openid, state, version, "
                "event_id, transaction_id, paid_amount, expires_at, created_at, updated_at) VALUES ('T1', 'order-1', "
                "100, 'CNY', 'd', 'o', 'synced', 3, 'evt_1', '4200', 100, now(), now(), now())")
            await admin.execute("INSERT INTO order_events (out_trade_no, to_state, trigger, source, detail, at) "
                                "VALUES ('T1', 'synced', 'sync', 'backend', '{\"k\": 1}', now())")
        with pytest.raises(asyncpg.CheckViolationError):  # v4's CHECK knows no `refunded`
            await admin.execute("UPDATE payments SET state = 'refunded'")
        store = await open_store(url)
        try:
            payment = await store.get("T1")
            assert payment is not None and payment.paid_amount == 100
            assert [(e.trigger, e.detail) for e in await store.events("T1")] == [("sync", {"k": 1})]
            moved = await store.transition(payment, State.REFUNDED, Trigger.REFUND, source=Source.SWEEPER,
                                           at=dt.datetime.now(dt.UTC), detail={"refunded": 100})
            assert moved.state is State.REFUNDED
            refund, created = await store.create_refund(factories.refund(payment), refundable=100, source="api",
                                                        detail={})
            assert created and await store.refunds_of("T1") == [refund]
        finally:
            await store.close()
        assert await admin.fetchval("SELECT max(version) FROM payflow_schema") == len(MIGRATIONS)
    finally:
        await admin.close()
