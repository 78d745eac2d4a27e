"""Typed keys of what the simulator app holds: read by its handlers, by in-process tests and by a chaos
driver (e.g. `app[LEDGER].orders(now)`, `await app[NOTIFIER].deliver_due(now)`)."""

from __future__ import annotations

from aiohttp import web

from payflow.clock import Clock
from payflow.devkeys import KeySet
from simulator.wechat.bills import BillFiles
from simulator.wechat.faults import FaultDice
from simulator.wechat.ledger import Ledger
from simulator.wechat.notifier import Notifier

KEYS = web.AppKey("KEYS", KeySet)
CLOCK = web.AppKey("CLOCK", Clock)
LEDGER = web.AppKey("LEDGER", Ledger)
FAULTS = web.AppKey("FAULTS", FaultDice)
BILLS = web.AppKey("BILLS", BillFiles)
NOTIFIER = web.AppKey("NOTIFIER", Notifier)  # set at start-up: it owns a client session
