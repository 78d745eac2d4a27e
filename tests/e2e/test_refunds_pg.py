"""The refund scenarios of test_refunds.py again, with payflow on PostgreSQL (a schema of its own per test)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tests import postgres_server
from tests.e2e.test_refunds import (  # noqa: F401 — collected here again, on PostgreSQL
    test_a_closed_payment_is_told_to_the_backend_once,
    test_a_full_refund_reaches_the_backend_and_refunds_the_payment,
    test_a_lost_refund_notification_is_found_by_the_sweeper,
    test_an_abnormal_refund_is_parked_then_closed_and_told_as_failed,
    test_an_operator_refunds_a_payment_in_review,
    test_partial_refunds_leave_the_payment_until_they_reach_its_amount,
    test_the_same_out_refund_no_is_the_same_refund,
    test_wechat_unreachable_answers_503_and_the_sweeper_submits_the_stored_refund,
)


@pytest.fixture
async def world_overrides(postgres: postgres_server.Server) -> AsyncIterator[dict[str, Any]]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres.url)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        yield {"database_url": f"{postgres.url}?search_path={schema}"}
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


async def test_this_module_runs_on_postgresql(world: Any) -> None:
    from payflow.store.postgres import PostgresStore

    assert isinstance(world.service.store, PostgresStore)
