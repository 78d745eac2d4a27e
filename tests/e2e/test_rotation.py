"""Secrets replaced without losing a payment: the merchant key and serial (and the APIv3 key) by a restart while
payments are in flight, and the backend's HMAC secret in two steps."""

from __future__ import annotations

import dataclasses
import pathlib
import secrets
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from payflow import errors, signing
from payflow.app import create_app
from payflow.backend import BackendClient, Delivery
from payflow.devkeys import BACKEND_SIM_PATH
from payflow.http import keys as app_keys
from payflow.settings import Settings
from payflow.states import State
from payflow.wechat import crypto
from payflow.wechat.client import WechatPayClient
from payflow.wechat.notify import NotificationVerifier
from simulator import backend as backend_sim
from simulator.wechat.appkeys import MERCHANT_CERTIFICATES
from tests import factories
from tests.e2e.conftest import OPENID, World

NEW_APIV3_KEY = "N" * 16 + "ew-apiv3-key-000"


async def _no_sleep(seconds: float) -> None:
    return None


async def test_a_restart_with_a_new_merchant_key_loses_no_payment(world: World, tmp_path: pathlib.Path) -> None:
    # Before the restart: payments at every step a restart can catch them in.
    waiting = await world.create("order-1")  # prepaid; the payer pays after the restart
    paid = await world.create("order-2")
    await world.pay(paid["out_trade_no"])  # paid; WeChat's notification is still to come (old APIv3 key)
    silent = await world.create("order-3")
    world.wechat_faults(never_deliver=1.0)
    await world.pay(silent["out_trade_no"])  # paid; no notification will ever come: only a query finds it
    world.wechat_faults(api_500=1.0, api_500_applied=1.0)
    status, _ = await world.api("POST", "/v1/payments", json={
        "order_id": "order-4", "amount": 1999, "description": "Coffee beans", "openid": OPENID})
    assert status == 503  # placed at WeChat, the answer lost: stored `created`, outcome unknown
    world.wechat_faults()

    # The merchant uploads a new API certificate; payflow restarts with its key and serial, and with a new
    # APIv3 key beside the previous one; then the old certificate is revoked, so only the new key works.
    private_pem, public_pem = crypto.generate_key_pair()
    key_file = tmp_path / "new_apiclient_key.pem"
    key_file.write_bytes(private_pem)
    serial = secrets.token_hex(20).upper()
    certificates: dict[str, Any] = world.wechat.app[MERCHANT_CERTIFICATES]
    certificates[serial] = crypto.load_public_key(public_pem)
    port = world.payflow.port  # the notify URL stays the same
    await world.payflow.close()  # SIGTERM: in-flight work drains, the store closes
    del certificates[world.keys.mch_serial]
    settings = dataclasses.replace(world.settings, wechat_mch_serial=serial, wechat_mch_key_file=str(key_file),
                                   wechat_apiv3_key=NEW_APIV3_KEY, wechat_apiv3_key_previous=world.keys.apiv3_key)
    now = lambda: world.clock.now().timestamp()  # noqa: E731
    client = WechatPayClient.from_settings(settings, now=now, sleep=_no_sleep, timeout=2.0)
    forwarder = BackendClient(world.settings.backend_url or "", world.keys.backend_secret, timeout=2.0, now=now)
    verifier = NotificationVerifier({world.keys.pub_key_id: world.keys.platform_public_key}, NEW_APIV3_KEY,
                                    previous_apiv3_key=world.keys.apiv3_key, now=now)
    app = create_app(settings, wechat=client, backend=forwarder, verifier=verifier, clock=world.clock,
                     run_sweeper=False)
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    world.payflow = server
    try:
        assert isinstance(world.payflow.app[app_keys.WECHAT], WechatPayClient)
        await world.pay(waiting["out_trade_no"])
        await world.notify()  # order-1's and order-2's notifications, encrypted with the previous APIv3 key
        world.advance(31)  # the unknown placement's grace and the silent payment's first query are due
        await world.sweep()  # a query (new key) finds order-3 paid; order-4 is re-entered for its prepay id
        unknown = await world.service.store.get_by_order_id("order-4")
        assert unknown is not None and unknown.state is State.PREPAID
        await world.pay(unknown.out_trade_no)
        await world.notify()
        fresh = await world.create("order-5")  # placed with the new key
        assert fresh["prepay_id"] == world.wechat_order(fresh["out_trade_no"]).prepay_id
        sources = {}
        for order_id in ("order-1", "order-2", "order-3", "order-4"):
            payment = await world.service.store.get_by_order_id(order_id)
            assert payment is not None and payment.state is State.SYNCED, order_id
            assert world.backend_order(order_id).status == "paid", order_id
            sources[order_id] = [e.source for e in await world.events(payment.out_trade_no) if e.trigger == "pay"]
        assert sources == {"order-1": ["notify"], "order-2": ["notify"], "order-3": ["query"], "order-4": ["notify"]}
    finally:
        await server.close()
        await client.aclose()
        await forwarder.aclose()


async def test_a_backend_rolls_its_secret_in_two_steps(world: World) -> None:
    """The backend accepts [old, new]; payflow moves to `new,old` (it signs with the first); the backend drops
    `old`. Every delivery along the way is acknowledged; one still signed with `old` afterwards is refused."""
    old, new = world.keys.backend_secret, "the-new-backend-secret"
    accepting = [old]  # the backend simulator verifies with this very list
    backend = TestServer(backend_sim.create_app(accepting, clock=world.clock), host="127.0.0.1")
    await backend.start_server()
    url = str(backend.make_url(BACKEND_SIM_PATH))

    async def deliver(variable: str) -> Delivery:
        settings = Settings.from_env({"PAYFLOW_BACKEND_SECRET": variable})
        client = BackendClient(url, settings.backend_secret or "", timeout=2.0,
                               now=lambda: world.clock.now().timestamp())
        try:
            return await client.deliver(factories.payment(state=State.NOTIFIED, transaction_id="4200000001",
                                                          paid_at=factories.T0))
        finally:
            await client.aclose()

    try:
        assert (await deliver(old)).outcome == "acked"
        accepting.append(new)  # step 1, at the backend
        assert (await deliver(old)).outcome == "acked"
        assert (await deliver(f"{new},{old}")).outcome == "acked"  # step 2, payflow restarted
        accepting.remove(old)  # step 3, at the backend
        assert (await deliver(f"{new},{old}")).outcome == "acked"
        refused = await deliver(old)
        assert (refused.outcome, refused.status) == ("retry", 401)
    finally:
        await backend.close()


def test_payflow_signs_with_the_first_secret_of_the_list() -> None:
    body = b'{"event_id":"evt-1"}'
    settings = Settings.from_env({"PAYFLOW_BACKEND_SECRET": " new , old "})
    assert settings.backend_secrets == ("new", "old") and settings.backend_secret == "new"
    headers = signing.sign_headers(settings.backend_secret or "", body, "evt-1", now=1_764_158_400)
    signing.verify_signature(["new"], headers, body, now=1_764_158_400)
    for bad in ("new,,old", "new,", ","):
        with pytest.raises(errors.SettingsError, match="^PAYFLOW_BACKEND_SECRET: an empty secret in the comma list$"):
            Settings.from_env({"PAYFLOW_BACKEND_SECRET": bad})
