"""A protocol-faithful WeChat Pay APIv3 simulator (JSAPI place/query/close, refunds, trade bills, signed and
encrypted notifications) with a seeded fault plan and `/sim/v1` control endpoints."""

from __future__ import annotations

from simulator.wechat.app import create_app
from simulator.wechat.appkeys import BILLS, CLOCK, FAULTS, KEYS, LEDGER, NOTIFIER, REFUNDS
from simulator.wechat.server import add_arguments, main, serve

__all__ = [
    "BILLS", "CLOCK", "FAULTS", "KEYS", "LEDGER", "NOTIFIER", "REFUNDS", "add_arguments", "create_app", "main",
    "serve",
]
