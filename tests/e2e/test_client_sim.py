"""payflow's WechatPayClient against the simulator: real signatures both ways, faults injected there."""

from __future__ import annotations

import datetime as dt

import pytest

from payflow import errors
from payflow.devkeys import KeySet
from payflow.wechat.client import WechatPayClient
from tests.e2e.conftest import World


def _client(world: World, **overrides: object) -> WechatPayClient:
    async def no_sleep(seconds: float) -> None:
        return None

    kwargs: dict[str, object] = {"now": lambda: world.clock.now().timestamp(), "sleep": no_sleep, "timeout": 2.0}
    kwargs.update(overrides)
    return WechatPayClient.from_settings(world.settings, **kwargs)  # type: ignore[arg-type]


async def test_place_order_is_retried_after_an_injected_500(world: World) -> None:
    world.wechat_faults(api_500=1.0)

    async def heal(seconds: float) -> None:  # between attempts, WeChat recovers
        world.wechat_faults()

    client = _client(world, sleep=heal)
    try:
        order = world.service.order(await _created(world))
        prepay_id = (await client.place(order)).prepay_id
        assert prepay_id == world.wechat_order(order.out_trade_no).prepay_id
        # re-entry with the identical order gets the same prepay_id
        assert (await client.place(order)).prepay_id == prepay_id
    finally:
        await client.aclose()


async def test_answers_that_fail_verification_are_refused(world: World, other_keyset: KeySet) -> None:
    client = _client(world)
    client._platform_keys = {world.keys.pub_key_id: other_keyset.platform_public_key}  # the wrong WeChat key
    try:
        # even a "not found" is not believed when its signature does not verify
        with pytest.raises(errors.WechatRetryable, match="unverified"):
            await client.query("PF0000000000001")
        created = await world.create("order-1")
        with pytest.raises(errors.WechatRetryable, match="verification"):
            await client.query(created["out_trade_no"])
    finally:
        await client.aclose()


async def test_query_close_and_bill_against_the_simulator(world: World) -> None:
    client = _client(world)
    try:
        created = await world.create("order-1")
        unpaid = await client.query(created["out_trade_no"])
        assert unpaid is not None and unpaid.trade_state == "NOTPAY" and unpaid.transaction_id is None
        assert await client.query("NEVERPLACED0001") is None
        await world.pay(created["out_trade_no"])
        paid = await client.query(created["out_trade_no"])
        assert paid is not None and paid.trade_state == "SUCCESS" and paid.amount == 1999
        with pytest.raises(errors.WechatFinal) as info:
            await client.close_order(created["out_trade_no"])
        assert info.value.wechat_code == "ORDERPAID"
        other = await world.create("order-2")
        await client.close_order(other["out_trade_no"])
        assert world.wechat_order(other["out_trade_no"]).state == "CLOSED"
        day = world.clock.now().astimezone(dt.timezone(dt.timedelta(hours=8))).date()
        for compressed in (False, True):
            data = await client.download_bill(await client.trade_bill(day, gzip=compressed))
            assert created["out_trade_no"].encode() in data and data.startswith(b"\xef\xbb\xbf")
    finally:
        await client.aclose()


async def _created(world: World) -> object:
    """A payment stored `created`, as if its first placement had never been answered."""
    from payflow.service import NewPayment

    world.wechat_faults(api_500=1.0)
    with pytest.raises(errors.WechatRetryable):
        await world.service.create_payment(NewPayment("order-x", 500, "Beans", "oPayer"))
    world.wechat_faults()
    payment = await world.service.store.get_by_order_id("order-x")
    assert payment is not None
    return payment
