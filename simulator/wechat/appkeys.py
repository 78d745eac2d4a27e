"""Typed keys of what the simulator app holds: read by its handlers, by in-process tests and by a chaos
driver (e.g. `app[LEDGER].orders(now)`, `await app[NOTIFIER].deliver_due(now)`, which also completes the
refunds due: `app[REFUNDS].advance(now)` does that alone)."""

from __future__ import annotations

from aiohttp import web

from payflow.clock import Clock
from payflow.devkeys import KeySet
from simulator.wechat.bills import BillFiles
from simulator.wechat.certificates import PlatformCertificates
from simulator.wechat.faults import FaultDice
from simulator.wechat.ledger import Ledger
from simulator.wechat.notifier import Notifier
from simulator.wechat.products import AppIds
from simulator.wechat.refunds import RefundDesk
from simulator.wechat.signing import Signer, SigningKey

KEYS = web.AppKey("KEYS", KeySet)
CLOCK = web.AppKey("CLOCK", Clock)
LEDGER = web.AppKey("LEDGER", Ledger)
FAULTS = web.AppKey("FAULTS", FaultDice)
BILLS = web.AppKey("BILLS", BillFiles)
NOTIFIER = web.AppKey("NOTIFIER", Notifier)  # set at start-up: it owns a client session
REFUNDS = web.AppKey("REFUNDS", RefundDesk)
# The merchant's API certificates WeChat accepts, by serial: the key set's own, and any a test adds or removes
# (replacing a certificate, a merchant has the old and the new one valid at once until it revokes the old).
MERCHANT_CERTIFICATES = web.AppKey("MERCHANT_CERTIFICATES", dict)
# The appids bound to the merchant's mchid; place-order checks each order's appid against them.
APPIDS = web.AppKey("APPIDS", AppIds)
# The key mode and the platform certificates (`app[SIGNER].certificates` is `app[CERTIFICATES]`).
SIGNER = web.AppKey("SIGNER", Signer)
CERTIFICATES = web.AppKey("CERTIFICATES", PlatformCertificates)
# The key one APIv3 request's answer is signed with, chosen once by the middleware (it may name one).
SIGNING_KEY = web.RequestKey("SIGNING_KEY", SigningKey)
