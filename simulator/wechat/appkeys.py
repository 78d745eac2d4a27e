"""Typed keys of what the simulator app holds: read by its handlers, by in-process tests and by a chaos
driver (e.g. `app[LEDGER].orders(now)`, `await app[NOTIFIER].deliver_due(now)`, which also completes the
refunds due: `app[REFUNDS].advance(now)` does that alone)."""

from __future__ import annotations

from aiohttp import web

from payflow.clock import Clock
from payflow.devkeys import KeySet
from simulator.wechat.bills import BillFiles
from simulator.wechat.faults import FaultDice
from simulator.wechat.ledger import Ledger
from simulator.wechat.notifier import Notifier
from simulator.wechat.refunds import RefundDesk

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
