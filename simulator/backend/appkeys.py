"""Typed keys of what the backend simulator app holds: read by its handlers, by in-process tests and by a
chaos driver (e.g. `app[LEDGER].register(order_id, amount)`, `app[FAULTS].injected`)."""

from __future__ import annotations

from aiohttp import web

from payflow.clock import Clock
from simulator.backend.faults import FaultInjector
from simulator.backend.ledger import Ledger

LEDGER = web.AppKey("backend_sim.ledger", Ledger)
FAULTS = web.AppKey("backend_sim.faults", FaultInjector)
# A list while a test rolls the secret: any of them verifies (`payflow.signing.verify_signature`).
SECRET: web.AppKey[str | list[str]] = web.AppKey("backend_sim.secret")
CLOCK: web.AppKey[Clock] = web.AppKey("backend_sim.clock")
