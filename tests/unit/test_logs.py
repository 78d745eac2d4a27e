"""logs.bound: context for the current task, restored exactly on exit."""

from __future__ import annotations

import asyncio

import structlog

from payflow import logs


def _context() -> dict[str, object]:
    return structlog.contextvars.get_contextvars()


def test_bound_keys_reach_the_log_context_and_leave_with_the_block() -> None:
    structlog.contextvars.clear_contextvars()
    with logs.bound(request_id="r1", out_trade_no="N1"):
        assert _context() == {"request_id": "r1", "out_trade_no": "N1"}
        with logs.bound(out_trade_no="N2"):  # a key bound again, and (the second time) the fast path
            assert _context() == {"request_id": "r1", "out_trade_no": "N2"}
        assert _context() == {"request_id": "r1", "out_trade_no": "N1"}
    assert _context() == {}


def test_a_value_bound_by_structlog_itself_comes_back() -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id="outer")
    for _ in range(2):  # the first pass creates the variable, the second reuses it
        with logs.bound(request_id="inner"):
            assert _context() == {"request_id": "inner"}
        assert _context() == {"request_id": "outer"}
    structlog.contextvars.clear_contextvars()


def test_the_block_is_restored_when_it_raises() -> None:
    structlog.contextvars.clear_contextvars()
    try:
        with logs.bound(notification_id="n1"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert _context() == {}


async def test_concurrent_tasks_do_not_see_each_others_context() -> None:
    seen: dict[str, object] = {}

    async def handle(name: str) -> None:
        with logs.bound(request_id=name):
            await asyncio.sleep(0)
            seen[name] = _context()["request_id"]

    await asyncio.gather(handle("a"), handle("b"))
    assert seen == {"a": "a", "b": "b"}
