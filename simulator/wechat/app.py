"""`create_app()`: the WeChat Pay simulator as an aiohttp application. No I/O here; the notifier's
client session and background loop live in a cleanup context."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable, Iterable, Mapping

import aiohttp
from aiohttp import web

from payflow.clock import Clock, SystemClock
from payflow.devkeys import KeySet
from simulator.wechat import api, control, key_control, refund_api
from simulator.wechat.appkeys import (
    APPIDS,
    BILLS,
    CERTIFICATES,
    CLOCK,
    FAULTS,
    KEYS,
    LEDGER,
    MERCHANT_CERTIFICATES,
    NOTIFIER,
    REFUNDS,
    SIGNER,
)
from simulator.wechat.bills import BillFiles
from simulator.wechat.certificates import VALIDITY, PlatformCertificates
from simulator.wechat.faults import FaultDice, WechatFaults
from simulator.wechat.ledger import Ledger
from simulator.wechat.notifier import Notifier
from simulator.wechat.products import AppIds
from simulator.wechat.refunds import RefundDesk
from simulator.wechat.signing import KeyMode, Signer

STOP_GRACE = 5.0
MAX_BODY_BYTES = 64 * 1024


def create_app(
    keys: KeySet,
    *,
    faults: WechatFaults | None = None,
    time_factor: float = 1.0,
    seed: int = 0,
    clock: Clock | None = None,
    notify: bool = True,
    key_mode: KeyMode | str = KeyMode.PUBKEY,
    appids: Mapping[str, str] | Iterable[str] = (),
    certificate_validity: dt.timedelta = VALIDITY,
    pubkey_share: float = 0.5,
) -> web.Application:
    """The simulator for `keys`' merchant. `time_factor` divides notification retry intervals and
    delays and refunds' processing time; with `notify=False` notifications queue up until someone calls
    `app[NOTIFIER].deliver_due`.

    `key_mode` (`pubkey`, `certificates`, `both`) says what WeChat signs with; a certificate mode issues the
    first platform certificate at once, valid `certificate_validity` from now; in `both`, `pubkey_share` of the
    notification attempts use the public key. `appids` are bound to the mchid besides the key set's own
    (appid → kind: official_account, mini_program or app; or just the appids)."""
    if time_factor <= 0:
        raise ValueError("time_factor must be positive")
    app = web.Application(middlewares=[api.api_middleware, control.control_middleware],
                          client_max_size=MAX_BODY_BYTES)
    app[KEYS] = keys
    app[MERCHANT_CERTIFICATES] = {keys.mch_serial: keys.merchant_public_key}
    app[CLOCK] = clock if clock is not None else SystemClock()
    app[LEDGER] = Ledger(keys.mchid, keys.appid)
    app[APPIDS] = AppIds(keys.appid, appids)
    app[CERTIFICATES] = PlatformCertificates(seed, validity=certificate_validity)
    app[SIGNER] = Signer(keys, app[CERTIFICATES], KeyMode(key_mode), seed=seed, pubkey_share=pubkey_share)
    app[SIGNER].ensure_certificate(app[CLOCK].now())
    app[FAULTS] = FaultDice(faults, seed)
    app[BILLS] = BillFiles()
    app[REFUNDS] = RefundDesk(app[LEDGER], app[FAULTS], time_factor=time_factor)
    app.cleanup_ctx.append(_notifier_ctx(time_factor=time_factor, notify=notify))
    api.setup(app)
    refund_api.setup(app)
    control.setup(app)
    key_control.setup(app)
    return app


def _notifier_ctx(*, time_factor: float, notify: bool) -> Callable[[web.Application], AsyncIterator[None]]:
    async def notifier_ctx(app: web.Application) -> AsyncIterator[None]:
        session = aiohttp.ClientSession()
        notifier = Notifier(app[KEYS], session, app[FAULTS], time_factor=time_factor, signer=app[SIGNER])
        app[NOTIFIER] = notifier
        app[REFUNDS].bind(notifier)  # refunds completing on the clock queue notifications from now on
        stop = asyncio.Event()
        loop = None
        if notify:
            loop = asyncio.create_task(notifier.run(app[CLOCK], stop), name="wechat-sim:notifier")
        try:
            yield
        finally:
            # Stop the loop first so it starts nothing new, then unwind sends in flight, then the session.
            stop.set()
            if loop is not None:
                # wait_for cancels the loop if it overstays the grace period.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(loop, STOP_GRACE)
            await notifier.aclose()
            await session.close()

    return notifier_ctx

