"""A protocol-faithful WeChat Pay APIv3 simulator (JSAPI, Native, H5 and App place/query/close, refunds, trade
bills, platform certificates, signed and encrypted notifications) with a seeded fault plan and `/sim/v1` control
endpoints."""

from __future__ import annotations

from simulator.wechat.app import create_app
from simulator.wechat.appkeys import APPIDS, BILLS, CERTIFICATES, CLOCK, FAULTS, KEYS, LEDGER, NOTIFIER, REFUNDS, SIGNER
from simulator.wechat.server import add_arguments, main, serve

__all__ = [
    "APPIDS", "BILLS", "CERTIFICATES", "CLOCK", "FAULTS", "KEYS", "LEDGER", "NOTIFIER", "REFUNDS", "SIGNER",
    "add_arguments", "create_app", "main", "serve",
]
