"""payflow's client in each PAYFLOW_WECHAT_KEY_MODE against the simulator signing the
same way: platform certificates downloaded and kept, a rotation learnt from an unknown serial, the saved set used
after a restart while WeChat is unreachable, and both modes at once during the migration."""

from __future__ import annotations

import dataclasses
import datetime as dt
import pathlib
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestServer

from payflow import errors
from payflow.clock import SHANGHAI, FakeClock
from payflow.devkeys import KeySet
from payflow.settings import Settings
from payflow.wechat import crypto, trust
from payflow.wechat.api import Order
from payflow.wechat.certificates import CertificateKeeper, KeyRing
from payflow.wechat.client import WechatPayClient
from simulator.wechat.app import create_app as create_wechat_sim
from simulator.wechat.appkeys import CLOCK, SIGNER

T0 = dt.datetime(2026, 11, 26, 4, 0, tzinfo=dt.UTC)


@dataclasses.dataclass
class Setup:
    wechat: TestServer
    settings: Settings
    clock: FakeClock

    def client(self, ring: KeyRing) -> WechatPayClient:
        async def no_sleep(seconds: float) -> None:
            return None

        return WechatPayClient.from_settings(self.settings, keys=ring, now=lambda: self.clock.now().timestamp(),
                                             sleep=no_sleep, timeout=2.0)

    def ring(self) -> KeyRing:
        ring = trust.key_ring(self.settings)
        ring.now = lambda: self.clock.now().timestamp()
        return ring

    def order(self, out_trade_no: str, trade_type: str = "native") -> Order:
        return Order(out_trade_no=out_trade_no, description="Coffee beans", amount=1999,
                     time_expire=(self.clock.now() + dt.timedelta(hours=2)).astimezone(SHANGHAI),
                     notify_url="https://pay.example.com/v1/wechat/notify", trade_type=trade_type,
                     openid="oPayer" if trade_type in ("jsapi", "miniprogram") else None)


@pytest.fixture
def key_mode() -> str:
    return "certificates"


@pytest.fixture
async def setup(keyset: KeySet, settings: Settings, tmp_path: pathlib.Path, key_mode: str) -> AsyncIterator[Setup]:
    clock = FakeClock(T0)
    wechat = TestServer(create_wechat_sim(keyset, clock=clock, notify=False, key_mode=key_mode), host="127.0.0.1")
    await wechat.start_server()
    try:
        configured = dataclasses.replace(
            settings, wechat_base_url=str(wechat.make_url("")).rstrip("/"), wechat_backup_url="",
            wechat_key_mode=key_mode, wechat_certificates_file=str(tmp_path / "wechat-certificates.json"),
            **({"wechat_pubkey_id": None, "wechat_pubkey_file": None} if key_mode == "certificates" else {}))
        yield Setup(wechat, configured, clock)
    finally:
        await wechat.close()


def _keeper(setup: Setup, ring: KeyRing, client: WechatPayClient) -> CertificateKeeper:
    # The keeper's minute between downloads runs on the test's clock.
    kept = trust.keeper(setup.settings, ring, client.download_certificates,
                        monotonic=lambda: setup.clock.now().timestamp())
    assert kept is not None
    return kept


async def test_certificates_are_downloaded_kept_and_a_rotation_is_learnt(setup: Setup) -> None:
    assert setup.settings.missing_for_serve() == [v for v in setup.settings.missing_for_serve()
                                                  if not v.startswith("PAYFLOW_WECHAT_PUBKEY")]
    ring = setup.ring()
    client = setup.client(ring)
    try:
        keeper = _keeper(setup, ring, client)
        with pytest.raises(errors.WechatRetryable, match="unknown Wechatpay-Serial"):
            await client.place(setup.order("K20261126000001"))  # nothing trusted yet: refused, not believed
        assert await keeper.refresh() is True
        assert (await client.place(setup.order("K20261126000001"))).code_url

        signer = setup.wechat.app[SIGNER]
        signer.certificates.rotate(setup.wechat.app[CLOCK].now(), overlap=dt.timedelta(0))  # signs with it now
        with pytest.raises(errors.WechatRetryable, match="unknown Wechatpay-Serial"):
            await client.query("K20261126000001")
        assert ring.wanted and await keeper.refresh_if_wanted() is False  # not twice within a minute
        setup.clock.advance(60)
        assert await keeper.refresh_if_wanted() is True  # the unknown serial asked for a download
        txn = await client.query("K20261126000001")
        assert txn is not None and txn.trade_state == "NOTPAY"
        assert len(ring.certificates) == 2  # the old one stays trusted until it expires
    finally:
        await client.aclose()


async def test_a_restart_while_wechat_is_unreachable_verifies_with_the_saved_set(setup: Setup) -> None:
    ring = setup.ring()
    client = setup.client(ring)
    try:
        assert await _keeper(setup, ring, client).refresh() is True
        headers, body = await client.download_certificates()  # any answer WeChat signed, kept for later
    finally:
        await client.aclose()
    await setup.wechat.close()  # WeChat is unreachable from here on

    restarted = setup.ring()
    offline = setup.client(restarted)
    try:
        kept = _keeper(setup, restarted, offline)  # loads the saved set: no download
        assert [c.serial for c in restarted.certificates] == [c.serial for c in ring.certificates]
        assert await kept.refresh() is False and len(restarted.certificates) == 1  # unreachable: kept as it was
    finally:
        await offline.aclose()
    crypto.verify_signed_message(headers, body, restarted, now=setup.clock.now().timestamp())  # still trusted


@pytest.mark.parametrize("key_mode", ["both"])
async def test_both_modes_trust_the_public_key_and_the_certificates(setup: Setup) -> None:
    ring = setup.ring()
    client = setup.client(ring)
    try:
        assert list(ring) == [setup.settings.wechat_pubkey_id]  # the public key from the start
        assert (await client.place(setup.order("K20261126000002", "app"))).prepay_id  # answered under the public key
        assert await _keeper(setup, ring, client).refresh() is True
        assert len(list(ring)) == 2
        for serial in ring:
            assert ring[serial] is not None
    finally:
        await client.aclose()
